// SiLU-and-mul: out = silu(x[:, :d]) * x[:, d:] in float32, rounded to the dtype.
#pragma once

#include "kernels/kernel_args.h"

namespace pagedllm::kernels {

void silu_and_mul_cpu(const SiluAndMulArgs& args);
#ifdef PAGEDLLM_WITH_CUDA
void silu_and_mul_cuda(const SiluAndMulArgs& args);
#endif

}  // namespace pagedllm::kernels
