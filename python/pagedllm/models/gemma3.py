"""Gemma 3 text decoder over the paged KV cache: Gemma3ForCausalLM (gemma-3-1b / 270m) and the
language model of Gemma3ForConditionalGeneration checkpoints (gemma-3-4b/12b/27b), served
text-only.

Llama's attention and MLP blocks (models/llama.py) with Gemma's differences: embeddings scaled
by sqrt(hidden_size); RMSNorm gains stored as 1 + w; four norms per layer, the attention and MLP
outputs normalized before their residual add; per-head q/k norms; attention scale
query_pre_attn_scalar ** -0.5; a GELU-tanh gated MLP; sliding-window layers interleaved with
global ones, each kind with its own rotary table; an optional tanh soft cap on the logits.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import nn

from pagedllm.layers.activation import GeluTanhAndMul
from pagedllm.layers.layernorm import RMSNorm
from pagedllm.layers.rotary_embedding import RotaryEmbedding
from pagedllm.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.llama import (DecoderOptions, LlamaAttention, LlamaForCausalLM, LlamaMLP,
                                   load_named_weights, make_rotary_embedding,
                                   run_decoder_stack)
from pagedllm.worker.attention_metadata import AttentionMetadata

SLIDING, FULL = "sliding_attention", "full_attention"


def check_supported(config: Any) -> None:
    """ValueError naming the config field of a Gemma variant this decoder does not run."""
    cap = getattr(config, "attn_logit_softcapping", None)
    if cap is not None:
        raise ValueError(f"attn_logit_softcapping: {cap} is not supported (Gemma 2 style tanh "
                         "cap on attention scores; pagedllm's attention kernels do not cap "
                         "them); only None is")
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError("use_bidirectional_attention: only causal attention is supported "
                         "(bidirectional Gemma 3 is an embedding model)")


def layer_types_of(config: Any) -> list[str]:
    """"sliding_attention" or "full_attention" per layer."""
    num_layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    if types is None:
        # transformers < 4.53 configs: every `pattern`-th layer is global, the others local.
        pattern = getattr(config, "sliding_window_pattern", 6)
        types = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers)]
    types = list(types)
    unknown = sorted(set(types) - {SLIDING, FULL})
    if len(types) != num_layers or unknown:
        raise ValueError(f"layer_types: expected {num_layers} of {SLIDING!r} / {FULL!r}, got "
                         f"{types}")
    return types


def rope_parameters_by_layer_type(config: Any) -> dict[str, dict]:
    """Rotary parameters ({"rope_theta", "rope_type", ...scaling}) of each layer type."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and FULL in params:
        # transformers 5: one dict per layer type; scaling (4b+: linear x8) on the global ones.
        by_type = {kind: dict(params.get(kind) or {}) for kind in (SLIDING, FULL)}
    else:
        # transformers 4.x: rope_theta / rope_scaling are the global layers', the local ones
        # rotate with rope_local_base_freq unscaled.
        full = dict(getattr(config, "rope_scaling", None) or {})
        full["rope_theta"] = getattr(config, "rope_theta", 1_000_000.0)
        by_type = {FULL: full,
                   SLIDING: {"rope_theta": getattr(config, "rope_local_base_freq", 10_000.0)}}
    for kind, p in by_type.items():
        if "rope_theta" not in p:
            raise ValueError(f"rope_parameters: no rope_theta for {kind!r} layers")
        p["rope_type"] = p.get("rope_type", p.get("type", "default")) or "default"
    return by_type


class Gemma3Attention(LlamaAttention):
    # post_attention_layernorm normalizes o_proj's output before the residual add, so there is no
    # fused add for split-K partials to ride on.
    output_into_fused_norm = False

    def __init__(self, config: Any, layer_idx: int, tp_rank: int, tp_size: int,
                 sliding_window: Optional[int], rotary_emb: RotaryEmbedding):
        # q_norm / k_norm are per-head RMSNorms applied before the rotation, as Qwen3's: the
        # rotary op runs them (their stored gains are 1 + w: see _norm_gains).
        super().__init__(config, layer_idx, DecoderOptions(qk_norm=True), tp_rank, tp_size,
                         sliding_window, rotary_emb, scale=config.query_pre_attn_scalar ** -0.5)


class Gemma3MLP(LlamaMLP):
    # post_feedforward_layernorm comes before the residual add (see Gemma3Attention).
    output_into_fused_norm = False

    @staticmethod
    def make_activation(config: Any) -> nn.Module:
        act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
        if act != "gelu_pytorch_tanh":
            raise ValueError(f"hidden_activation: only 'gelu_pytorch_tanh' is supported, got "
                             f"{act!r}")
        return GeluTanhAndMul()


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int, tp_rank: int, tp_size: int,
                 sliding_window: Optional[int], rotary_emb: RotaryEmbedding):
        super().__init__()
        self.self_attn = Gemma3Attention(config, layer_idx, tp_rank, tp_size, sliding_window,
                                         rotary_emb)
        self.mlp = Gemma3MLP(config, tp_rank, tp_size)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = RMSNorm(hidden, eps)
        self.post_feedforward_layernorm = RMSNorm(hidden, eps)

    def forward(self, positions, hidden, residual, kv_cache, meta):
        """Gemma's block is h += post_attn(attn(input(h))); h += post_ff(mlp(pre_ff(h))). The two
        residual adds ride the fused add + norm of the norm that follows each: pre_feedforward
        here, the next layer's input_layernorm (or the final norm) for the MLP's. The post norms
        come before their add and run alone. Returns (post_ff output, residual) un-added."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden = self.post_attention_layernorm(hidden)
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        hidden = self.post_feedforward_layernorm(self.mlp(hidden))
        return hidden, residual


class Gemma3Model(nn.Module):
    def __init__(self, config: Any, tp_rank: int, tp_size: int):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   tp_rank=tp_rank, tp_size=tp_size)
        # transformers multiplies by sqrt(hidden_size) rounded to the weights' dtype (in bf16
        # sqrt(3072) = 55.43 becomes 55.5); float32 first, as its buffer is.
        scale = torch.tensor(config.hidden_size ** 0.5, dtype=torch.float32)
        self.register_buffer("embed_scale", scale.to(self.embed_tokens.weight.dtype),
                             persistent=False)
        types = layer_types_of(config)
        rope = rope_parameters_by_layer_type(config)
        # One cos/sin table per layer type (local and global layers rotate with other bases).
        self.rotary_embs = nn.ModuleDict(
            {kind: make_rotary_embedding(config, rope[kind]) for kind in sorted(set(types))})
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(config, i, tp_rank, tp_size,
                               config.sliding_window if kind == SLIDING else None,
                               self.rotary_embs[kind])
            for i, kind in enumerate(types))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) * self.embed_scale     # [T, H]
        return run_decoder_stack(self.layers, self.norm, hidden, positions, kv_caches, meta)


class Gemma3ForCausalLM(nn.Module):
    """Model interface of LlamaForCausalLM (forward, compute_logits, load_weights)."""

    stacked_params = LlamaForCausalLM.stacked_params

    def __init__(self, config: Any, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        check_supported(config)
        self.config = config
        self.model = Gemma3Model(config, tp_rank, tp_size)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                      tp_rank=tp_rank, tp_size=tp_size)
        if self.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)   # unscaled: no sqrt(H) on the head
        self.final_logit_softcapping: Optional[float] = getattr(config, "final_logit_softcapping",
                                                                None)

    def forward(self, input_ids, positions, kv_caches, meta):
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.compute_logits(hidden)
        cap = self.final_logit_softcapping
        if cap is not None:
            # cap * tanh(logits / cap), step by step in the logits' dtype as transformers does.
            logits = torch.tanh(logits / cap) * cap
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_named_weights(self, _norm_gains(self.language_model_weights(weights)),
                           self.stacked_params,
                           skip=lambda n: self.tie_word_embeddings and n.startswith("lm_head."))

    @staticmethod
    def language_model_weights(weights: Iterable[tuple[str, torch.Tensor]]
                               ) -> Iterator[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors under our names (Gemma3ForCausalLM's are ours already)."""
        return iter(weights)


def _norm_gains(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Gemma's RMSNorm multiplies by (1 + w) where others multiply by w: store the gain 1 + w, so
    RMSNorm, its kernels and the rotary op's q/k norm apply it unchanged. The sum is taken in
    float32 as transformers does; in float32 models the stored gain is then exact, in bf16 /
    fp16 it is rounded once to the model's dtype when copied in (transformers keeps w in bf16 and
    adds 1 in float32 at every call)."""
    for name, tensor in weights:
        if name.endswith("norm.weight"):
            tensor = tensor.float() + 1.0
        yield name, tensor


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """The language model of a Gemma 3 vision-language checkpoint, served text-only: its vision
    tower and projector weights are skipped, so prompts with images are not supported."""

    # Checkpoint prefixes of the language model: the original release's and transformers 5's.
    _RENAMES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                ("model.language_model.", "model."))
    _SKIPPED = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                "model.multi_modal_projector.")

    @staticmethod
    def text_only_config(hf_config: Any) -> Any:
        """The language model's config, which the engine runs on (KV cache shape, vocabulary,
        maximum length), carrying the checkpoint's architecture, dtype and head tying. A config
        without text_config (already this one) is returned as it is."""
        if getattr(hf_config, "text_config", None) is None:
            return hf_config
        text = copy.deepcopy(hf_config.text_config)
        text.architectures = list(hf_config.architectures)
        # The multimodal model ties its LM head by the top-level flag.
        text.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", True))
        dtype_key = "dtype" if hasattr(hf_config, "dtype") else "torch_dtype"  # transformers 4
        for key in (dtype_key, "eos_token_id"):
            if getattr(text, key, None) is None and getattr(hf_config, key, None) is not None:
                setattr(text, key, getattr(hf_config, key))
        return text

    @classmethod
    def language_model_weights(cls, weights: Iterable[tuple[str, torch.Tensor]]
                               ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if name.startswith(cls._SKIPPED):
                continue
            for theirs, ours in cls._RENAMES:
                if name.startswith(theirs):
                    name = ours + name[len(theirs):]
                    break
            yield name, tensor
