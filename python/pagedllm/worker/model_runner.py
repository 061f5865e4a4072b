"""ModelRunner: loads the model, owns the paged KV cache, and runs one BatchPlan per step.

execute_model(plan) writes the plan's new K/V into the cache and returns the logits (float32 unless
asked otherwise) of the rows that are sampled. The plan is only read (its arrays are views the core owns).

GPU path:
- inputs go through CudaInputBuffers: one persistent pinned host + device buffer pair, one
  non_blocking copy per step of the used prefix (input_buffers.py);
- KV blocks come from gpu_memory_utilization after profile_run() of max_num_batched_tokens, with
  the decode CUDA graphs' memory counted first;
- pure-decode plans replay a CUDA graph captured per padded batch size (cuda_graphs.py);
  enforce_eager turns graphs off, and so does a module with supports_cuda_graphs = False (MoE
  experts off the grouped path: their matmuls are sized by the routing, read on the host).

LoRA (lora_config set): the linear layers are wrapped after loading (pagedllm.lora); a step
whose sequences use adapters passes their ids (lora_ids [S]) and runs eagerly, since its LoRA
matmuls are sized by the step's token ranges; decode steps without adapters still replay the
graphs, which were captured with no adapter active.
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from pagedllm.config import (CacheConfig, DeviceConfig, LoRAConfig, ModelConfig, ParallelConfig,
                             SchedulerConfig)
from pagedllm.models.loader import build_model, choose_dtype, resolve_model_config
from pagedllm.worker.attention_metadata import AttentionMetadata
from pagedllm.worker.cuda_graphs import DecodeGraphs, capture_sizes
from pagedllm.worker.input_buffers import CudaInputBuffers, StepInputs, build_cpu_inputs
from pagedllm.worker.kv_cache import (KVCacheSpec, allocate_kv_caches, cpu_num_blocks,
                                      kv_cache_spec)

if TYPE_CHECKING:
    from pagedllm.lora.manager import LoRAManager

logger = logging.getLogger(__name__)

# Tokens of the profiling forward when no scheduler config says how many a step may hold.
DEFAULT_PROFILE_TOKENS = 8192


def resolve_device(device_config: DeviceConfig) -> torch.device:
    if device_config.device == "cpu":
        return torch.device("cpu")
    if device_config.device == "cuda" or torch.cuda.is_available():
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but CUDA is not available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ModelRunner:
    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig,
                 device_config: DeviceConfig, parallel_config: ParallelConfig, rank: int = 0,
                 *, scheduler_config: Optional[SchedulerConfig] = None,
                 lora_config: Optional[LoRAConfig] = None):
        self.model_config = model_config
        self.lora_config = lora_config
        self.cache_config = cache_config
        self.device_config = device_config
        self.parallel_config = parallel_config
        self.scheduler_config = scheduler_config
        self.rank = rank
        self.device = resolve_device(device_config)
        if model_config.hf_config is None:
            resolve_model_config(model_config, self.device)
        # "auto" depends on the device: choose again in case the config was resolved elsewhere.
        model_config.torch_dtype = choose_dtype(model_config.dtype, model_config.hf_config,
                                                self.device)
        self.hf_config = model_config.hf_config
        self.dtype: torch.dtype = model_config.torch_dtype
        self.max_model_len: int = model_config.max_model_len
        self.vocab_size: int = self.hf_config.vocab_size
        self.eos_token_ids: list[int] = _eos_token_ids(model_config)
        self.eos_token_id: Optional[int] = self.eos_token_ids[0] if self.eos_token_ids else None
        self.block_size = cache_config.block_size
        self.kv_spec: KVCacheSpec = kv_cache_spec(self.hf_config, self.block_size, self.dtype,
                                                  parallel_config.tensor_parallel_size)
        self.model: Optional[torch.nn.Module] = None
        self.kv_caches: list[torch.Tensor] = []   # per layer [2, NB, BS, Hkv, D]
        self.num_blocks = 0                         # set by allocate_kv_cache (null block incl.)
        self._cuda_buffers: Optional[CudaInputBuffers] = None
        self._decode_graphs: Optional[DecodeGraphs] = None
        self.lora_manager: Optional[LoRAManager] = None   # with lora_config

    # ---- setup -------------------------------------------------------------------------------

    def load_model(self) -> None:
        self.model = build_model(self.model_config, self.device, tp_rank=self.rank,
                                 tp_size=self.parallel_config.tensor_parallel_size)
        if (self.device.type == "cuda" and not self.device_config.enforce_eager
                and not model_supports_cuda_graphs(self.model)):
            logger.info("%s: decode steps run eagerly (no CUDA graphs): its forward has shapes "
                        "that depend on the data", type(self.model).__name__)
        if self.lora_config is not None:
            from pagedllm.lora.manager import LoRAManager

            self.lora_manager = LoRAManager(self.model, self.lora_config, self.device, self.dtype)
            if self.device.type == "cuda" and not self.device_config.enforce_eager:
                logger.info("LoRA: steps with adapters run eagerly; decode steps without "
                            "adapters replay CUDA graphs")

    # ---- LoRA adapters (the engine decides which are loaded; lora/slots.py) ---------------------

    def check_lora(self, lora_request: Any) -> None:
        self._require_lora().check(lora_request)

    def add_lora(self, lora_request: Any) -> None:
        self._require_lora().add(lora_request)

    def remove_lora(self, lora_int_id: int) -> bool:
        return self._require_lora().remove(lora_int_id)

    def _require_lora(self) -> LoRAManager:
        if self.lora_manager is None:
            raise ValueError("lora_request: LoRA is not enabled (start the engine with "
                             "enable_lora=True / --enable-lora)")
        return self.lora_manager

    @property
    def max_blocks_per_seq(self) -> int:
        return (self.max_model_len + self.block_size - 1) // self.block_size

    def _max_num_seqs(self) -> int:
        return self.scheduler_config.max_num_seqs if self.scheduler_config else 256

    def _max_num_batched_tokens(self) -> int:
        if self.scheduler_config and self.scheduler_config.max_num_batched_tokens:
            return self.scheduler_config.max_num_batched_tokens
        return max(DEFAULT_PROFILE_TOKENS, self.max_model_len)

    def determine_num_blocks(self) -> int:
        """KV blocks (null block 0 included) to allocate on this device."""
        if self.cache_config.num_gpu_blocks_override is not None and self.device.type == "cuda":
            return self.cache_config.num_gpu_blocks_override
        # More blocks than max_num_seqs full-length sequences can hold are never used.
        useful = self._max_num_seqs() * self.max_blocks_per_seq + 1
        if self.device.type == "cpu":
            return cpu_num_blocks(self.kv_spec, self.cache_config.kv_cache_space_bytes, useful)
        return self._profile_gpu_num_blocks(useful)

    def _profile_gpu_num_blocks(self, useful: int) -> int:
        """UNTESTED (needs CUDA). Blocks = (total * utilization - memory in use after loading
        - peak extra memory of a full-size forward) / bytes per block."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        free_before, total = torch.cuda.mem_get_info(self.device)
        allocated_before = torch.cuda.memory_allocated(self.device)
        self.profile_run(self._max_num_batched_tokens())
        torch.cuda.synchronize(self.device)
        activation_peak = torch.cuda.max_memory_allocated(self.device) - allocated_before
        # Decode CUDA graphs keep their own memory pool: the activations of the largest captured
        # batch, measured the same way, are counted before the KV cache takes the rest.
        graph_reserve = 0
        if self._graphs_enabled():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.profile_run(max(capture_sizes(self._max_num_seqs())))
            torch.cuda.synchronize(self.device)
            graph_reserve = torch.cuda.max_memory_allocated(self.device) - allocated_before
        torch.cuda.empty_cache()
        # Everything in use before profiling (weights, other processes, the CUDA context).
        in_use = total - free_before
        # Adapters are loaded after the KV cache is allocated: room for the most that may be.
        lora_reserve = self.lora_manager.max_memory_bytes() if self.lora_manager else 0
        budget = (total * self.cache_config.gpu_memory_utilization - in_use - activation_peak
                  - graph_reserve - lora_reserve)
        logger.info("GPU memory: %.2f GiB total, %.2f GiB in use before profiling, activation "
                    "peak %.2f GiB, CUDA-graph reserve %.2f GiB, KV budget %.2f GiB",
                    total / 2**30, in_use / 2**30, activation_peak / 2**30,
                    graph_reserve / 2**30, budget / 2**30)
        if lora_reserve:
            logger.info("GPU memory: %.2f GiB kept for LoRA adapters", lora_reserve / 2**30)
        num_blocks = int(budget // self.kv_spec.bytes_per_block)
        if num_blocks < 2:
            raise ValueError(f"gpu_memory_utilization: {self.cache_config.gpu_memory_utilization}"
                             f" leaves no room for the KV cache (budget {budget / 2**30:.2f} GiB)")
        return min(num_blocks, useful)

    @torch.inference_mode()
    def profile_run(self, num_tokens: int) -> torch.Tensor:
        """A forward pass of `num_tokens` prompt tokens (at most max_num_seqs sequences of at most
        max_model_len) plus logits for max_num_seqs rows, against a throw-away cache just big enough for it: the
        peak activation memory a real step can reach. Returns the logits."""
        self._require_model()
        # Prompts of max_model_len tokens, at most max_num_seqs of them: no engine step holds
        # more sequences (nor, then, more than max_num_seqs * max_model_len tokens).
        max_seqs = self._max_num_seqs()
        lengths = [self.max_model_len] * min(num_tokens // self.max_model_len, max_seqs)
        if num_tokens % self.max_model_len and len(lengths) < max_seqs:
            lengths.append(num_tokens % self.max_model_len)
        plan = _synthetic_prefill_plan(lengths, self.block_size, self.max_blocks_per_seq)
        blocks_needed = int(plan.block_table.max()) + 1
        saved = self.kv_caches
        self.kv_caches = allocate_kv_caches(self.kv_spec, blocks_needed, self.device)
        try:
            rows = np.resize(np.asarray(plan.logits_indices), min(self._max_num_seqs(), num_tokens))
            return self.execute_model(plan, rows)
        finally:
            self.kv_caches = saved

    def initialize(self) -> int:
        """Load the model, size the KV cache for this device and allocate it (decode graphs
        captured on CUDA). Returns the number of blocks, null block included."""
        self.load_model()
        self.allocate_kv_cache(self.determine_num_blocks())
        return self.num_blocks

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """num_blocks includes the null block 0."""
        if num_blocks < 2:
            raise ValueError(f"num_blocks: need at least 2 (null block + 1), got {num_blocks}")
        self.kv_caches = []
        self._decode_graphs = None
        self.kv_caches = allocate_kv_caches(self.kv_spec, num_blocks, self.device)
        self.num_blocks = num_blocks
        if self._graphs_enabled():
            self._decode_graphs = DecodeGraphs(
                self.model, self.kv_caches, self._input_buffers(),
                capture_sizes(self._max_num_seqs()), self.max_model_len, self.max_blocks_per_seq)
            self._decode_graphs.capture()

    def _graphs_enabled(self) -> bool:
        # Graphs need every kernel of the forward capturable: the reference attention (head
        # sizes without a CUDA kernel) reads its metadata on the host, so those run eagerly.
        from pagedllm.ops import cuda_attention_supported

        return (self.device.type == "cuda" and not self.device_config.enforce_eager
                and model_supports_cuda_graphs(self.model)
                and cuda_attention_supported(self.kv_spec.head_dim, self.dtype))

    # ---- one step ----------------------------------------------------------------------------

    def _require_model(self) -> None:
        if self.model is None:
            raise RuntimeError("ModelRunner.load_model() must run before executing the model")

    def _prepare(self, plan: Any, previous_tokens: Optional[torch.Tensor] = None) -> StepInputs:
        if self.device.type == "cpu":
            return build_cpu_inputs(plan, self.block_size, previous_tokens)
        return self._input_buffers().build(plan, previous_tokens=previous_tokens)

    def _input_buffers(self) -> CudaInputBuffers:
        if self._cuda_buffers is None:
            self._cuda_buffers = CudaInputBuffers(
                max(self._max_num_batched_tokens(), self._max_num_seqs()), self._max_num_seqs(),
                self.max_blocks_per_seq, self.block_size, self.device)
        return self._cuda_buffers

    # The engine may plan one step ahead (Scheduler.schedule_ahead): this runner fills a plan's
    # deferred input tokens from the previous step's sampled tokens on the device.
    accepts_previous_tokens = True

    @torch.inference_mode()
    def execute_model(self, plan: Any, logits_rows: Optional[np.ndarray] = None,
                      float32_logits: bool = True,
                      previous_tokens: Optional[torch.Tensor] = None,
                      lora_ids: Optional[np.ndarray] = None) -> torch.Tensor:
        """Run the plan's tokens; logits [len(rows), vocab] for token rows `logits_rows`
        (default plan.logits_indices), on this runner's device: float32, or the model's dtype
        with float32_logits=False (the engine's sampler upcasts only where it must: one
        [N, V] copy less per step). previous_tokens [N_prev] int32 on this device: the last
        step's sampled tokens, which a plan made ahead (plan.num_deferred > 0) takes as inputs.
        lora_ids [S] int (0: none): each sequence's adapter; None when no sequence has one."""
        self._require_model()
        if not self.kv_caches:
            raise RuntimeError("ModelRunner.allocate_kv_cache() must run before executing")
        rows = plan.logits_indices if logits_rows is None else logits_rows
        rows = np.asarray(rows, dtype=np.int64)                         # [N]
        if int(plan.num_tokens) == 0:
            return torch.empty((len(rows), self.vocab_size), dtype=torch.float32,
                               device=self.device)
        # The logits rows go to the device before the forward is queued: CUDA may make a copy
        # from pageable host memory wait for the work queued ahead of it, and after the launch
        # that is the whole forward. Rows 0..T-1 in order (every decode step) need no gather.
        all_rows = len(rows) == int(plan.num_tokens) and np.array_equal(rows, np.arange(len(rows)))
        index = None
        if len(rows) and not all_rows:
            index = torch.from_numpy(rows).to(self.device, non_blocking=True)  # [N]
        hidden = self._forward(plan, previous_tokens, lora_ids)          # [T, H]
        if len(rows) == 0:
            return torch.empty((0, self.vocab_size), dtype=torch.float32, device=self.device)
        if index is not None:
            hidden = hidden.index_select(0, index)                      # [N, H]
        logits = self.model.compute_logits(hidden)                      # [N, V] model dtype
        return logits.float() if float32_logits else logits


    @torch.inference_mode()
    def execute_hidden(self, plan: Any) -> torch.Tensor:
        """Run the plan's tokens (writing their K/V) and return every row's hidden state after
        the final norm, [T, H] in the model's dtype: what pooling (embedding) engines read."""
        self._require_model()
        if not self.kv_caches:
            raise RuntimeError("ModelRunner.allocate_kv_cache() must run before executing")
        return self._forward(plan, None, None)

    def _forward(self, plan: Any, previous_tokens: Optional[torch.Tensor],
                 lora_ids: Optional[np.ndarray]) -> torch.Tensor:
        """The model forward of one plan: hidden states [T, H] (padded rows past T for a
        replayed decode graph)."""
        graph_size = None
        if self._decode_graphs is not None and lora_ids is None:
            graph_size = self._decode_graphs.padded_size(plan)
        if graph_size is not None:
            return self._decode_graphs.run(plan, graph_size, previous_tokens)
        if lora_ids is not None:
            lora = self._require_lora()
            lora.begin_step(np.asarray(plan.query_start_loc), np.asarray(lora_ids))
            try:
                inputs = self._prepare(plan, previous_tokens)
                return self.model(inputs.input_ids, inputs.positions, self.kv_caches,
                                  inputs.meta)
            finally:
                lora.end_step()
        inputs = self._prepare(plan, previous_tokens)
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)


class _SyntheticPlan:
    """The BatchPlan fields ModelRunner reads, for profiling and tests."""

    def __init__(self, **fields: Any):
        self.__dict__.update(fields)


def _synthetic_prefill_plan(lengths: list[int], block_size: int, max_blocks: int) -> _SyntheticPlan:
    """Whole prompts of the given lengths (token id 0), blocks 1, 2, ... assigned in order."""
    num_seqs = len(lengths)
    qsl = np.zeros(num_seqs + 1, dtype=np.int32)                        # [S + 1]
    qsl[1:] = np.cumsum(lengths)
    table = np.zeros((num_seqs, max_blocks), dtype=np.int32)            # [S, max_blocks]
    slots, positions = [], []
    next_block = 1
    for i, n in enumerate(lengths):
        nb = (n + block_size - 1) // block_size
        table[i, :nb] = np.arange(next_block, next_block + nb)
        pos = np.arange(n)
        slots.append(table[i, pos // block_size] * block_size + pos % block_size)
        positions.append(pos)
        next_block += nb
    seq_lens = np.asarray(lengths, dtype=np.int32)
    return _SyntheticPlan(
        num_seqs=num_seqs, num_tokens=int(qsl[-1]), num_sampled=num_seqs,
        max_query_len=max(lengths), max_seq_len=max(lengths),
        input_ids=np.zeros(int(qsl[-1]), dtype=np.int32),
        positions=np.concatenate(positions).astype(np.int32),
        slot_mapping=np.concatenate(slots).astype(np.int32),
        query_start_loc=qsl, seq_lens=seq_lens, num_computed=np.zeros(num_seqs, dtype=np.int32),
        block_table=table, logits_indices=(qsl[1:] - 1).astype(np.int32),
        sampled_seq_indices=np.arange(num_seqs, dtype=np.int32),
        handles=np.arange(num_seqs, dtype=np.int64), preempted_handles=np.zeros(0, np.int64),
    )


def model_supports_cuda_graphs(model: Optional[torch.nn.Module]) -> bool:
    """False when the model or one of its modules says supports_cuda_graphs = False: its forward
    reads values on the host to size its work (MoE experts off the grouped path), which a graph
    capture cannot include and a replay would keep the sizes of."""
    if model is None:
        return True
    return all(getattr(m, "supports_cuda_graphs", True) for m in model.modules())


def _eos_token_ids(model_config: ModelConfig) -> list[int]:
    """EOS ids from generation_config.json (preferred, as HF generate does) or the config."""
    value = None
    path = model_config.model_path
    if path and os.path.isdir(path):
        gen_path = os.path.join(path, "generation_config.json")
        if os.path.isfile(gen_path):
            with open(gen_path) as f:
                value = json.load(f).get("eos_token_id")
    if value is None:
        value = getattr(model_config.hf_config, "eos_token_id", None)
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


__all__ = ["ModelRunner", "AttentionMetadata", "resolve_device"]
