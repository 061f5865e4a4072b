// Fused sampling by the exponential race (ops/__init__.py: exponential_race_sample), for batches
// without top-k / top-p / min-p and without per-request seeds:
//   token[r] = argmax_i  logits[r, i]                                   (greedy rows)
//   token[r] = argmax_i  logits[r, i] * inv_temperature[r] + G(r, i)    (the others)
// with G = -log(-log(u)), u uniform from Philox4x32-10 keyed by `seed` at counter
// (i / 4, r, step low, step high), element i % 4 of the draw. argmax_i (l_i / T + G_i) is a sample of
// softmax(l / T) (the Gumbel-max form of the exponential race). Ties go to the smaller index, as
// torch.argmax. One pass over the logits in their own dtype, instead of the five float32 passes
// (cast, divide, noise, log, subtract + argmax) of the torch path.
#pragma once

#include "kernels/kernel_args.h"

namespace pagedllm::kernels {

// Largest vocabulary the CUDA kernel takes (65,535 chunks of 8,192 elements on the grid's y axis).
constexpr int64_t kMaxRaceVocab = int64_t{65535} * 8192;

void exponential_race_sample_cpu(const ExponentialRaceArgs& args);
#ifdef PAGEDLLM_WITH_CUDA
void exponential_race_sample_cuda(const ExponentialRaceArgs& args);
#endif

}  // namespace pagedllm::kernels
