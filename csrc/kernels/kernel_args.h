// Plain argument structs for pagedllm's kernels: raw pointers, shapes, strides, a dtype code and
// the stream as void*. No torch, no Python. The binding fills and validates these; the launchers
// (CUDA) and CPU twins trust them.
//
// Strides are in elements. Unless a stride field says otherwise, the innermost dimension is
// contiguous.
#pragma once

#include <cstdint>

namespace pagedllm::kernels {

// Codes shared with python/pagedllm/ops/__init__.py (_DTYPE_CODES).
enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kInt32 = 3,
  kInt64 = 4,
};

inline int dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
  }
  return "?";
}

// K/V cache layout everywhere: [2, num_blocks, block_size, num_kv_heads, head_dim], contiguous.
struct ReshapeAndCacheArgs {
  const void* key;              // [num_tokens, num_kv_heads, head_dim], row stride key_stride
  const void* value;            // [num_tokens, num_kv_heads, head_dim], row stride value_stride
  void* kv_cache;               // [2, num_blocks, block_size, num_kv_heads, head_dim]
  const int32_t* slot_mapping;  // [num_tokens]; slot < 0: skip the token
  int64_t num_tokens;
  int64_t key_stride;           // elements between tokens of key
  int64_t value_stride;
  int64_t num_blocks;
  int num_kv_heads;
  int head_dim;
  int block_size;
  DType dtype;                  // of key, value and kv_cache (all equal)
  void* stream;                 // cudaStream_t (CUDA only)
};

// Causal attention of each sequence's query chunk over its paged context (ops/reference.py).
struct PagedAttentionArgs {
  void* out;                        // [num_tokens, num_q_heads, head_dim], contiguous
  const void* query;                // [num_tokens, num_q_heads, head_dim], token stride q_stride
  const void* kv_cache;             // [2, num_blocks, block_size, num_kv_heads, head_dim]
  const int32_t* block_table;       // [num_seqs, max_blocks_per_seq]
  const int32_t* query_start_loc;   // [num_seqs + 1]
  const int32_t* seq_lens;          // [num_seqs]
  // Optional [num_tokens] permutation of the tokens, the order the CUDA token kernel starts them
  // in (longest context first balances the last wave); null = token order. Never changes the
  // result; the CPU twin ignores it.
  const int32_t* token_order;
  // -1: unknown. n >= 0: the tokens of chunks shorter than kPrefillMmaMinQueryLen (decode rows,
  // short extends) are all among ranks [0, n) of token_order (of the tokens when it is null), so
  // when the tensor-core kernel takes the long chunks, the token kernel covers only those ranks
  // (a batch of long chunks otherwise pays one empty token-kernel CTA per token and KV head).
  int64_t short_chunk_tokens;
  int64_t q_stride;                 // elements between query tokens
  int64_t num_tokens;
  int64_t num_blocks;
  int num_seqs;
  int max_blocks_per_seq;
  int num_q_heads;
  int num_kv_heads;
  int head_dim;
  int block_size;
  float scale;
  int max_query_len;                // >= every q_len (CUDA: sizes the prefill grid)
  int max_seq_len;                  // >= every seq_len (CUDA: sizes the split-KV grid)
  int sliding_window;               // > 0: query at p sees keys in (p - window, p]
  DType dtype;                      // of query, out and kv_cache
  // CUDA split-KV scratch (paged_attention_workspace_bytes), 16-byte aligned; may be null when
  // the workspace size is 0.
  void* workspace;
  void* stream;
};

struct RmsNormArgs {
  void* out;               // [num_rows, hidden], row stride out_stride
  const void* x;           // [num_rows, hidden], row stride x_stride
  const void* weight;      // [hidden]
  int64_t num_rows;
  int64_t x_stride;
  int64_t out_stride;
  int hidden;
  float eps;
  DType dtype;             // of out, x and weight
  void* stream;
};

// In place: residual <- x + residual; x <- rms_norm(residual) * weight.
// With partials (a split-K GEMM's float32 partial products, summed here instead of in a kernel of
// their own): the added value is round(sum over s of partials[s]) and x is written only.
struct FusedAddRmsNormArgs {
  void* x;                 // [num_rows, hidden], row stride x_stride
  void* residual;          // [num_rows, hidden], row stride residual_stride
  const void* weight;      // [hidden]
  int64_t num_rows;
  int64_t x_stride;
  int64_t residual_stride;
  int hidden;
  float eps;
  DType dtype;
  void* stream;
  const float* partials = nullptr;  // [num_partials, num_rows, hidden] contiguous, or null
  int num_partials = 0;
};

// In place rotation of the first rot_dim dims of every head of query and key, optionally after a
// per-head RMSNorm (Qwen3's q_norm / k_norm): head <- round(rms_norm(head) * weight), then rotate.
struct RotaryEmbeddingArgs {
  const void* positions;       // [num_tokens] int32 or int64 (positions_dtype)
  void* query;                 // [num_tokens, num_q_heads * head_size], row stride query_stride
  void* key;                   // [num_tokens, num_kv_heads * head_size], row stride key_stride
  const void* cos_sin_cache;   // [max_position, rot_dim]: cos | sin
  int64_t num_tokens;
  int64_t query_stride;
  int64_t key_stride;
  int64_t max_position;
  int num_q_heads;
  int num_kv_heads;
  int head_size;
  int rot_dim;
  bool is_neox;
  DType dtype;                 // of query and key
  DType cache_dtype;           // float32 or dtype
  DType positions_dtype;       // int32 or int64
  const void* q_norm_weight;   // [head_size] of dtype, or null: no per-head norm
  const void* k_norm_weight;   // [head_size] of dtype; null exactly when q_norm_weight is
  float norm_eps;
  // Non-null kv_write.kv_cache: the rotated key and kv_write.value also go into the paged cache
  // (reshape_and_cache in the same pass; kv_write.key is the rotated key, i.e. `key`).
  ReshapeAndCacheArgs kv_write;
  void* stream;
};

// sampling.h: one token per row by the exponential race (greedy rows: argmax).
struct ExponentialRaceArgs {
  int64_t* out;                  // [num_rows] token ids
  const void* logits;            // [num_rows, vocab], row stride logits_stride, elements dense
  const float* inv_temperature;  // [num_rows] 1 / T (read for non-greedy rows only)
  const int32_t* greedy;         // [num_rows] non-zero: argmax, no noise
  int64_t num_rows;
  int64_t logits_stride;
  int64_t vocab;
  uint64_t seed;                 // Philox key
  uint64_t step;                 // part of the counter: a new draw every step
  DType dtype;                   // of logits
  void* stream;
};

struct SiluAndMulArgs {
  void* out;               // [num_rows, d], contiguous
  const void* x;           // [num_rows, 2 * d], contiguous: gate then up
  int64_t num_rows;
  int64_t d;
  DType dtype;
  void* stream;
};

}  // namespace pagedllm::kernels
