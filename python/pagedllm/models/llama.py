"""Llama-family decoder (Llama 2/3/3.x, Mistral) over the paged KV cache.

The same blocks serve Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm): see models/qwen.py;
with expert blocks as the MLPs (make_mlp), the MoE models: models/qwen_moe.py, models/mixtral.py.
Parameter names follow Hugging Face except q/k/v -> qkv_proj and gate/up -> gate_up_proj, which
load_weights() stacks.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Optional

import torch
from torch import nn

from pagedllm.layers.activation import SiluAndMul
from pagedllm.layers.attention import Attention
from pagedllm.layers.layernorm import RMSNorm
from pagedllm.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear,
                                    RowParallelLinear, default_weight_loader)
from pagedllm.layers.rotary_embedding import (RotaryEmbedding, rope_parameters_from_config,
                                              rope_scaled_max_positions)
from pagedllm.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.worker.attention_metadata import AttentionMetadata


# The K/V cache write rides the rotary kernel; False: a separate reshape_and_cache launch (kept
# for A/B runs: benchmarks/constant_ab.sh; both write the same cache).
FUSED_KV_WRITE = True


def head_dim_of(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class DecoderOptions:
    """What distinguishes the Llama-like families."""

    def __init__(self, qkv_bias: bool = False, qk_norm: bool = False):
        self.qkv_bias = qkv_bias
        self.qk_norm = qk_norm


def make_rotary_embedding(config: Any, rope_params: Optional[dict] = None) -> RotaryEmbedding:
    """The model's rotary table ([positions, rotary_dim] float32): one row per position the
    engine serves (the loader's engine_max_model_len), else max_position_embeddings rows or more
    where the rope scaling reaches further (YaRN). rope_params: instead of the config's own
    (models with a table per layer type pass each one's)."""
    head_dim = head_dim_of(config)
    if rope_params is None:
        rope_params = rope_parameters_from_config(config)
    rotary_dim = int(head_dim * rope_params.get(
        "partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
    # max_model_len never exceeds the model's reach (the loader checks), and no position
    # reaches max_model_len: a shorter table saves memory (e.g. 2 x 128 MiB on Gemma 3 4b+).
    max_positions = getattr(config, "engine_max_model_len", None) or max(
        config.max_position_embeddings, rope_scaled_max_positions(rope_params) or 0)
    return RotaryEmbedding(head_dim, rotary_dim, max_positions, rope_params, is_neox_style=True)


class LlamaAttention(nn.Module):
    # o_proj's output goes straight into a residual add + RMSNorm, which can sum split-K partials.
    output_into_fused_norm = True

    def __init__(self, config: Any, layer_idx: int, options: DecoderOptions, tp_rank: int,
                 tp_size: int, sliding_window: Optional[int], rotary_emb: RotaryEmbedding,
                 scale: Optional[float] = None):
        super().__init__()
        hidden = config.hidden_size
        self.head_dim = head_dim_of(config)
        num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        qkv_bias = options.qkv_bias or getattr(config, "attention_bias", False)
        self.qkv_proj = QKVParallelLinear(hidden, self.head_dim, config.num_attention_heads,
                                          num_kv_heads, bias=qkv_bias, tp_rank=tp_rank,
                                          tp_size=tp_size)
        self.num_heads = self.qkv_proj.num_heads          # on this rank
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, hidden,
                                        bias=getattr(config, "attention_bias", False),
                                        tp_rank=tp_rank, tp_size=tp_size)
        # Shared by the layers: one cos/sin table per model (Gemma 3: per layer type).
        self.rotary_emb = rotary_emb
        # scale: the attention logits' (Gemma: query_pre_attn_scalar ** -0.5), by default
        # head_dim ** -0.5.
        self.attn = Attention(self.num_heads, self.head_dim,
                              self.head_dim ** -0.5 if scale is None else scale,
                              self.num_kv_heads, sliding_window=sliding_window)
        # Qwen3's / Gemma 3's per-head RMSNorm of q and k (None elsewhere), fused into the
        # rotation.
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if options.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if options.qk_norm else None

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)                           # [T, (Hq + 2 Hkv) * D]
        # Views into qkv, no copies: the kernels take rows with any stride as long as each
        # row is dense (rotary rotates them in place inside qkv).
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # In place in qkv. With FUSED_KV_WRITE the rotary kernel also writes the rotated k and
        # v into the paged cache (one launch fewer per layer); else the attention layer does.
        fused = FUSED_KV_WRITE
        cache = dict(value=v, kv_cache=kv_cache, slot_mapping=meta.slot_mapping) if fused else {}
        q, k = self.rotary_emb(positions, q, k, self.q_norm, self.k_norm, **cache)
        out = self.attn(q, k, v, kv_cache, meta, kv_written=fused)  # [T, Hq * D]
        # Into post_attention_layernorm's residual add: may come back as split-K partials.
        return self.o_proj(out, into_fused_norm=self.output_into_fused_norm)


class LlamaMLP(nn.Module):
    # down_proj's output goes straight into a residual add + RMSNorm (see LlamaAttention).
    output_into_fused_norm = True

    def __init__(self, config: Any, tp_rank: int, tp_size: int,
                 intermediate_size: Optional[int] = None, reduce_results: bool = True):
        """intermediate_size: other than config.intermediate_size (an MoE's shared expert);
        reduce_results=False leaves the output as this rank's partial sum, for the caller to
        add to others before one all-reduce."""
        super().__init__()
        self.act = self.make_activation(config)
        bias = getattr(config, "mlp_bias", False)
        inter = intermediate_size or config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [inter, inter],
                                                       bias=bias, tp_rank=tp_rank, tp_size=tp_size)
        self.down_proj = RowParallelLinear(inter, config.hidden_size, bias=bias,
                                           reduce_results=reduce_results, tp_rank=tp_rank,
                                           tp_size=tp_size)

    @staticmethod
    def make_activation(config: Any) -> nn.Module:
        """The gated activation of [gate | up] -> [I]."""
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act: only 'silu' is supported, got {config.hidden_act!r}")
        return SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Into the next layer's input_layernorm (or the final norm), with the residual.
        return self.down_proj(self.act(self.gate_up_proj(x)),
                              into_fused_norm=self.output_into_fused_norm)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int, options: DecoderOptions, tp_rank: int,
                 tp_size: int, sliding_window: Optional[int], rotary_emb: RotaryEmbedding,
                 mlp: Optional[nn.Module] = None):
        """mlp: x [T, H] -> [T, H] in place of LlamaMLP (an MoE block)."""
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx, options, tp_rank, tp_size,
                                        sliding_window, rotary_emb)
        self.mlp = mlp if mlp is not None else LlamaMLP(config, tp_rank, tp_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden, residual, kv_cache, meta):
        # `residual` carries the un-normalized stream; the fused norm adds into it in place.
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: Any, options: DecoderOptions, tp_rank: int, tp_size: int,
                 sliding_windows: list[Optional[int]],
                 mlps: Optional[list[Optional[nn.Module]]] = None):
        """mlps: per layer, the MLP (None: LlamaMLP)."""
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   tp_rank=tp_rank, tp_size=tp_size)
        rotary_emb = make_rotary_embedding(config)
        mlps = mlps or [None] * config.num_hidden_layers
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, options, tp_rank, tp_size, sliding_windows[i], rotary_emb,
                              mlps[i])
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, kv_caches, meta):
        return run_decoder_stack(self.layers, self.norm, self.embed_tokens(input_ids), positions,
                                 kv_caches, meta)


def run_decoder_stack(layers: Iterable[nn.Module], final_norm: nn.Module, hidden: torch.Tensor,
                      positions: torch.Tensor, kv_caches: list[torch.Tensor],
                      meta: AttentionMetadata) -> torch.Tensor:
    """The embedded tokens [T, H] through the layers and the final norm. Each layer returns its
    output and the residual un-added; the next layer's (or the final) fused add+norm adds them."""
    residual = None
    for layer, kv_cache in zip(layers, kv_caches):
        hidden, residual = layer(positions, hidden, residual, kv_cache, meta)
    hidden, _ = final_norm(hidden, residual)
    return hidden


class LlamaForCausalLM(nn.Module):
    """Model interface used by ModelRunner:
    forward(input_ids [T], positions [T], kv_caches list of [2, NB, BS, Hkv, D], meta) -> [T, H];
    compute_logits(hidden [N, H]) -> float32 [N, V]; load_weights(iterable of (hf_name, tensor))."""

    options = DecoderOptions()
    # (our parameter, checkpoint name, shard id)
    stacked_params = (
        (".qkv_proj.", ".q_proj.", "q"), (".qkv_proj.", ".k_proj.", "k"),
        (".qkv_proj.", ".v_proj.", "v"),
        (".gate_up_proj.", ".gate_proj.", 0), (".gate_up_proj.", ".up_proj.", 1),
    )
    # (our stacked parameter, checkpoint name, part) of MoE experts (layers/moe.py); none here.
    expert_params: tuple[tuple[str, str, str], ...] = ()

    def __init__(self, config: Any, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.config = config
        mlps = [self.make_mlp(config, i, tp_rank, tp_size)
                for i in range(config.num_hidden_layers)]
        self.model = LlamaModel(config, self.decoder_options(config), tp_rank, tp_size,
                                self.sliding_windows(config), mlps)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                      tp_rank=tp_rank, tp_size=tp_size)
        if self.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    @staticmethod
    def sliding_windows(config: Any) -> list[Optional[int]]:
        """Per-layer sliding window (None = full attention). Llama has none."""
        return [None] * config.num_hidden_layers

    def decoder_options(self, config: Any) -> DecoderOptions:
        """The family's options (Qwen2-MoE reads its q/k/v bias from the config)."""
        return self.options

    def make_mlp(self, config: Any, layer_idx: int, tp_rank: int,
                 tp_size: int) -> Optional[nn.Module]:
        """Layer `layer_idx`'s MLP; None: LlamaMLP (MoE models return their expert blocks)."""
        return None

    def forward(self, input_ids, positions, kv_caches, meta):
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def fused_checkpoint_params(self) -> tuple:
        """(name fragment, ((shard id, rows), ...)) for checkpoint tensors that hold several of
        our shards stacked along dim 0 (Phi-3's qkv_proj); none in Llama checkpoints."""
        return ()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_named_weights(self, weights, self.stacked_params,
                           skip=lambda n: "rotary_emb.inv_freq" in n
                           or (self.tie_word_embeddings and n.startswith("lm_head.")),
                           fused_params=self.fused_checkpoint_params(),
                           expert_params=self.expert_params)


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def sliding_windows(config: Any) -> list[Optional[int]]:
        return [getattr(config, "sliding_window", None)] * config.num_hidden_layers


# One expert's tensor in a checkpoint: (prefix up to "experts").(expert id).(name).
_EXPERT_TENSOR = re.compile(r"(.*\.experts)\.(\d+)\.(.+)")


def load_named_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                       stacked_params, skip, fused_params=(), expert_params=()) -> None:
    """Copy checkpoint tensors into `model`'s parameters through their weight loaders; raise
    ValueError naming any parameter the checkpoint did not provide or any unknown tensor.

    stacked_params: (our parameter, checkpoint name, shard id) for checkpoint tensors that are
    one shard of a parameter of ours. fused_params: (name fragment, ((shard id, rows), ...)) for
    checkpoint tensors that hold all the shards of a parameter of the same name, stacked along
    dim 0 in that order; each part goes through the weight loader on its own, which keeps this
    rank's rows of every shard under tensor parallelism. expert_params: (our parameter under
    `experts.`, checkpoint name under `experts.{e}.`, part) for MoE checkpoints that store each
    expert apart: `...experts.{e}.<name>` loads with shard id (e, part) into `...experts.<ours>`,
    whose every expert and part must then come; a missing one is named as the checkpoint
    would name it."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    by_checkpoint_name = {theirs: (ours, part) for ours, theirs, part in expert_params}
    expert_parts: dict[str, set[tuple[int, str]]] = {}   # our parameter -> (expert, part) loaded
    for name, tensor in weights:
        if skip(name):
            continue
        match = _EXPERT_TENSOR.fullmatch(name) if expert_params else None
        if match is not None:
            prefix, expert, theirs = match.group(1), int(match.group(2)), match.group(3)
            if theirs not in by_checkpoint_name:
                raise ValueError(f"checkpoint tensor {name!r} matches no model parameter")
            ours, part = by_checkpoint_name[theirs]
            target = f"{prefix}.{ours}"
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no parameter {target!r}")
            param = params[target]
            param.weight_loader(param, tensor, (expert, part))
            expert_parts.setdefault(target, set()).add((expert, part))
            continue
        fused = next((shards for fragment, shards in fused_params if fragment in name), None)
        if fused is not None:
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} matches no model parameter")
            rows = [n for _, n in fused]
            if tensor.shape[0] != sum(rows):
                raise ValueError(f"checkpoint tensor {name!r} has {tensor.shape[0]} rows; "
                                 f"expected {sum(rows)} ({' + '.join(map(str, rows))})")
            param = params[name]
            for (shard_id, _), part in zip(fused, tensor.split(rows, dim=0)):
                param.weight_loader(param, part, shard_id)
            loaded.add(name)
            continue
        for ours, theirs, shard_id in stacked_params:
            if theirs in name:
                target = name.replace(theirs, ours)
                if target not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no parameter {target!r}")
                param = params[target]
                param.weight_loader(param, tensor, shard_id)
                loaded.add(target)
                break
        else:
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} matches no model parameter")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
    missing = sorted(set(params) - loaded - set(expert_parts))
    for target, parts in expert_parts.items():
        if target in loaded:    # also came whole
            continue
        prefix, ours = target.rsplit(".", 1)
        absent = [f"{prefix}.{e}.{theirs}" for e in range(params[target].shape[0])
                  for o, theirs, part in expert_params if o == ours and (e, part) not in parts]
        missing += absent
    if missing:
        raise ValueError(f"checkpoint is missing weights: {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}")

