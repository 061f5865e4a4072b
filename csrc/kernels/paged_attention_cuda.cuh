// Internal to the CUDA paged-attention kernels: shared parameters, launch helpers and the
// routing constants between the token kernel and the tensor-core prefill kernel.
#pragma once

#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/kernel_args.h"
#include "kernels/paged_attention.h"

namespace pagedllm::kernels::attn {

// Granularity (tokens) of KV splits in the token kernel: a split covers a multiple of this many
// context tokens. Small, so that a batch of one or a few sequences still spreads over the GPU.
constexpr int kSplitGranularity = 64;
constexpr int kTokenKernelWarps = 4;
// Query heads one decode CTA computes at most (a larger GQA group takes several CTAs, "slices",
// per KV head).
constexpr int kMaxSliceHeads = 8;

struct TokenKernelParams {
  void* out;                       // [T, Hq, D]
  const void* query;               // [T, Hq, D], token stride q_stride
  const void* kv_cache;            // [2, NB, BS, Hkv, D]
  const int32_t* block_table;      // [S, max_blocks]
  const int32_t* query_start_loc;  // [S + 1]
  const int32_t* seq_lens;         // [S]
  const int32_t* token_order;      // [T] permutation or null (see PagedAttentionArgs)
  float* ws_out;                   // [T, Hq, num_splits, D] split outputs, normalized
  float* ws_ml;                    // [T, Hq, num_splits, 2] split (max logit, sum of exp)
  int64_t q_stride;
  int64_t kv_plane;                // elements of one of the K / V planes
  int num_tokens;
  int token_ranks;                 // the grid covers ranks [0, token_ranks) of token_order
  int num_seqs;
  int max_blocks;
  int num_q_heads;
  int num_kv_heads;
  int group;                       // num_q_heads / num_kv_heads
  int slices;                      // CTAs per KV head (the group in slices of slice_width heads)
  int slice_width;                 // query heads per slice (the last slice may have fewer)
  int block_shift;                 // log2(block_size)
  float scale;
  int sliding_window;
  int num_splits;                  // splits per (token, head slice); see split_size
  bool skip_long;                  // sequences with q_len >= kPrefillMmaMinQueryLen go elsewhere
};

// Index of the sequence that owns query token t: the largest s with query_start_loc[s] <= t.
__device__ __forceinline__ int find_sequence(const int32_t* qsl /* [S + 1] */, int num_seqs, int t) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (qsl[mid] <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Tokens per split for a query whose keys end at kv_end: its own context cut into num_splits
// kSplitGranularity-aligned parts. The size follows the sequence, not the launch's max_seq_len
// hint, so a CUDA graph captured with max_model_len still splits a short context finely.
// The token kernel and the merge kernel must agree on it.
__device__ __forceinline__ int split_size(int kv_end, int num_splits) {
  const int per = (kv_end + num_splits - 1) / num_splits;
  return (per + kSplitGranularity - 1) / kSplitGranularity * kSplitGranularity;
}

// One CTA per (rank of token_order < token_ranks, KV-head slice, split).
void launch_token_attention(const PagedAttentionArgs& a, bool skip_long, int64_t token_ranks);
int64_t token_attention_workspace_bytes(const PagedAttentionArgs& a);
void launch_prefill_attention(const PagedAttentionArgs& a);
bool prefill_mma_applies(const PagedAttentionArgs& a);
int sm_count();

}  // namespace pagedllm::kernels::attn
