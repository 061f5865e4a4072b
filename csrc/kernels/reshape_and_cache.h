// reshape_and_cache: write new tokens' K and V into the paged cache at their slots.
// slot = block_id * block_size + offset; slot < 0 skips the token (padding, preempted rows).
#pragma once

#include "kernels/kernel_args.h"

namespace pagedllm::kernels {

void reshape_and_cache_cpu(const ReshapeAndCacheArgs& args);
#ifdef PAGEDLLM_WITH_CUDA
void reshape_and_cache_cuda(const ReshapeAndCacheArgs& args);
#endif

}  // namespace pagedllm::kernels
