# Type stubs for pagedllm._C.ops (csrc/bindings/ops_bindings.cc).
#
# Every tensor argument is a descriptor tuple (data_ptr, shape, strides, dtype_code,
# device_index): strides in elements, dtype codes 0 float32, 1 float16, 2 bfloat16, 3 int32,
# 4 int64, device_index -1 for the CPU. pagedllm.ops builds them from torch tensors (ops._desc).
# `stream` is a cudaStream_t as an integer (torch.cuda.current_stream().cuda_stream); 0 on CPU.
# Invalid input raises ValueError before anything runs; CUDA tensors on a build without CUDA
# raise RuntimeError.
from typing import Optional, Sequence, Tuple

TensorDesc = Tuple[int, Sequence[int], Sequence[int], int, int]

def reshape_and_cache(key: TensorDesc, value: TensorDesc, kv_cache: TensorDesc,
                      slot_mapping: TensorDesc, stream: int = 0) -> None: ...
def paged_attention_workspace_bytes(out: TensorDesc, query: TensorDesc, kv_cache: TensorDesc,
                                    block_table: TensorDesc, query_start_loc: TensorDesc,
                                    seq_lens: TensorDesc, scale: float, max_query_len: int,
                                    max_seq_len: int, sliding_window: int = -1) -> int: ...
def paged_attention(out: TensorDesc, query: TensorDesc, kv_cache: TensorDesc,
                    block_table: TensorDesc, query_start_loc: TensorDesc, seq_lens: TensorDesc,
                    scale: float, max_query_len: int, max_seq_len: int,
                    sliding_window: int = -1, workspace: int = 0, workspace_bytes: int = 0,
                    stream: int = 0, token_order: Optional[TensorDesc] = None,
                    short_chunk_tokens: int = -1) -> None: ...
PREFILL_KERNEL_MIN_QUERY_LEN: int
# rotary_embedding with q_norm_weight / k_norm_weight: the largest head_size accepted.
MAX_NORM_ROTARY_HEAD_SIZE: int
def rms_norm(out: TensorDesc, x: TensorDesc, weight: TensorDesc, eps: float,
             stream: int = 0) -> None: ...
def fused_add_rms_norm(x: TensorDesc, residual: TensorDesc, weight: TensorDesc, eps: float,
                       stream: int = 0, partials: Optional[TensorDesc] = None) -> None: ...
def rotary_embedding(positions: TensorDesc, query: TensorDesc, key: TensorDesc, head_size: int,
                     cos_sin_cache: TensorDesc, is_neox: bool, stream: int = 0,
                     q_norm_weight: Optional[TensorDesc] = None,
                     k_norm_weight: Optional[TensorDesc] = None,
                     norm_eps: float = 1e-6, value: Optional[TensorDesc] = None,
                     kv_cache: Optional[TensorDesc] = None,
                     slot_mapping: Optional[TensorDesc] = None) -> None: ...
def exponential_race_sample(out: TensorDesc, logits: TensorDesc, inv_temperature: TensorDesc,
                            greedy: TensorDesc, seed: int, step: int, stream: int = 0) -> None: ...
def silu_and_mul(out: TensorDesc, x: TensorDesc, stream: int = 0) -> None: ...
