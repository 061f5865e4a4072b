// RMSNorm and fused residual-add + RMSNorm (ops/reference.py: rms_norm, fused_add_rms_norm).
// Statistics in float32; fused_add rounds x + residual to the dtype before normalizing, as the
// reference does.
#pragma once

#include "kernels/kernel_args.h"

namespace pagedllm::kernels {

void rms_norm_cpu(const RmsNormArgs& args);
void fused_add_rms_norm_cpu(const FusedAddRmsNormArgs& args);
#ifdef PAGEDLLM_WITH_CUDA
void rms_norm_cuda(const RmsNormArgs& args);
void fused_add_rms_norm_cuda(const FusedAddRmsNormArgs& args);
#endif

}  // namespace pagedllm::kernels
