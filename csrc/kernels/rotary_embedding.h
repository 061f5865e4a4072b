// Rotary position embedding in place on query and key (ops/reference.py: rotary_embedding).
// NeoX style pairs dim i with i + rot_dim/2; GPT-J style pairs 2i with 2i + 1. cos_sin_cache row
// p holds cos(p * f_i) in [0, rot_dim/2) and sin(p * f_i) in [rot_dim/2, rot_dim).
#pragma once

#include "kernels/kernel_args.h"

namespace pagedllm::kernels {

// With per-head norm weights the CUDA kernel stages a warp's head in shared memory (4 bytes per
// dim, 48 KB per CTA): head sizes above this are rejected by the binding on every device.
constexpr int kMaxNormRotaryHeadSize = 8192;

void rotary_embedding_cpu(const RotaryEmbeddingArgs& args);
#ifdef PAGEDLLM_WITH_CUDA
void rotary_embedding_cuda(const RotaryEmbeddingArgs& args);
#endif

}  // namespace pagedllm::kernels
