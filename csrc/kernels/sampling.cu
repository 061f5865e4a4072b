// exponential_race_sample on CUDA: one CTA per row streams the row once (4 elements and one
// Philox draw per thread per iteration), keeps a per-thread best (score, index), then reduces
// over the block. The float math matches the CPU twin (no fused multiply-add in the score).
#include <cstdint>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/philox.h"
#include "kernels/sampling.h"

namespace pagedllm::kernels {
namespace {

constexpr int kThreads = 512;

// (score, index) with ties to the smaller index; a NaN score never wins.
__device__ __forceinline__ bool better(float s, int64_t i, float best, int64_t best_i) {
  return s > best || (s == best && i < best_i);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
exponential_race_kernel(int64_t* __restrict__ out,                // [R]
                        const T* __restrict__ logits,             // [R, V], row stride
                        const float* __restrict__ inv_temperature,  // [R]
                        const int32_t* __restrict__ greedy,       // [R]
                        int64_t stride, int64_t vocab, uint64_t seed, uint64_t step) {
  __shared__ float best_s[kThreads / 32];
  __shared__ int64_t best_idx[kThreads / 32];
  const int64_t r = blockIdx.x;
  const T* x = logits + r * stride;
  const bool is_greedy = greedy[r] != 0;
  const float inv_t = inv_temperature[r];
  const auto k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  float best = -INFINITY;
  int64_t best_i = INT64_MAX;
  for (int64_t i0 = static_cast<int64_t>(threadIdx.x) * 4; i0 < vocab; i0 += kThreads * 4) {
    Philox4 bits{};
    if (!is_greedy) {
      bits = philox4x32_10(Philox4{{static_cast<uint32_t>(i0 / 4), static_cast<uint32_t>(r),
                                    static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32)}},
                           k0, k1);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (i0 + e < vocab) {
        const float l = cuda::to_float(x[i0 + e]);
        const float s = is_greedy ? l : __fsub_rn(__fmul_rn(l, inv_t), logf(-logf(unit_open(bits.v[e]))));
        if (better(s, i0 + e, best, best_i)) {
          best = s;
          best_i = i0 + e;
        }
      }
    }
  }
  // Warp, then block: the best (score, index) pair.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float s = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t i = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (better(s, i, best, best_i)) {
      best = s;
      best_i = i;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    best_s[warp] = best;
    best_idx[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) {
      if (better(best_s[w], best_idx[w], best, best_i)) {
        best = best_s[w];
        best_i = best_idx[w];
      }
    }
    out[r] = best_i == INT64_MAX ? 0 : best_i;  // no finite score: token 0, as the CPU twin
  }
}

}  // namespace

void exponential_race_sample_cuda(const ExponentialRaceArgs& a) {
  if (a.num_rows == 0) return;
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    exponential_race_kernel<T><<<static_cast<unsigned>(a.num_rows), kThreads, 0,
                                 cuda::as_stream(a.stream)>>>(
        a.out, static_cast<const T*>(a.logits), a.inv_temperature, a.greedy, a.logits_stride,
        a.vocab, a.seed, a.step);
  });
  cuda::check_launch("exponential_race_sample");
}

}  // namespace pagedllm::kernels
