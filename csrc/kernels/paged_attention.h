// Paged attention (ops/reference.py: paged_attention): each sequence's query chunk attends
// causally to its whole cached context, the chunk's own keys included (reshape_and_cache ran
// first). Decode (q_len = 1), chunked prefill and prefix-cache hits are the same call.
//
// CUDA routing, per sequence:
//   q_len <  kPrefillMmaMinQueryLen, or fp32: the token kernel (paged_attention_decode.cu), one CTA
//       per (query token, KV-head slice, KV split); query heads sharing a KV head are processed
//       together (GQA packing) and long contexts split across CTAs (flash-decoding) with a
//       log-sum-exp merge.
//   q_len >= kPrefillMmaMinQueryLen, fp16/bf16: the tensor-core kernel (paged_attention_prefill.cu).
// The grids depend only on (num_tokens, num_seqs, max_query_len, max_seq_len, short_chunk_tokens),
// so a CUDA graph captured with fixed hints replays correctly for any contents within them.
#pragma once

#include <cstdint>

#include "kernels/kernel_args.h"

namespace pagedllm::kernels {

constexpr int kPrefillMmaMinQueryLen = 16;

void paged_attention_cpu(const PagedAttentionArgs& args);
#ifdef PAGEDLLM_WITH_CUDA
// Bytes of scratch the CUDA launch needs for these arguments (0: none).
int64_t paged_attention_workspace_bytes(const PagedAttentionArgs& args);
void paged_attention_cuda(const PagedAttentionArgs& args);
// Head sizes with compiled CUDA kernels.
bool paged_attention_cuda_supports_head_dim(int head_dim);
#endif

}  // namespace pagedllm::kernels
