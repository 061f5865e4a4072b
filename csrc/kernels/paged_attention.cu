// paged_attention on CUDA: routes each sequence to the token kernel or the tensor-core prefill
// kernel (see paged_attention.h); both read the same paged cache and write disjoint rows of out.
#include <algorithm>

#include "kernels/paged_attention_cuda.cuh"

namespace pagedllm::kernels {

bool paged_attention_cuda_supports_head_dim(int head_dim) {
  return head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128 || head_dim == 256;
}

int64_t paged_attention_workspace_bytes(const PagedAttentionArgs& args) {
  return attn::token_attention_workspace_bytes(args);
}

void paged_attention_cuda(const PagedAttentionArgs& args) {
  if (args.num_tokens == 0 || args.num_seqs == 0) return;
  const bool use_mma = attn::prefill_mma_applies(args);
  // Ranks of token_order the token kernel covers: every token, or only the short chunks' when
  // the tensor-core kernel takes the long ones and the caller said where the short ones are.
  const int64_t token_ranks =
      use_mma && args.short_chunk_tokens >= 0 ? std::min(args.short_chunk_tokens, args.num_tokens) : args.num_tokens;
  if (token_ranks > 0) attn::launch_token_attention(args, /*skip_long=*/use_mma, token_ranks);
  if (use_mma) attn::launch_prefill_attention(args);
}

}  // namespace pagedllm::kernels
