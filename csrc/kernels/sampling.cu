// exponential_race_sample on CUDA: each row is cut into chunks of kChunk elements, one CTA per
// (row, chunk), so that a batch of any size fills the GPU (one CTA per row left most SMs idle
// for small batches and took 153 us for 244 x 151,936 on an H200). A CTA streams its chunk (4
// elements and one Philox draw per thread per iteration), keeps a per-thread best (score, index),
// reduces over the block and folds its winner into the row's slot with one 64-bit atomicMax on a
// packed key; a last kernel unpacks the slots into token ids. The float math matches the CPU twin
// (no fused multiply-add in the score), and the packed order is the twin's order, so the token is
// the same whatever the chunking.
#include <cstdint>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/philox.h"
#include "kernels/sampling.h"

namespace pagedllm::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;  // elements per CTA: a multiple of 4 (one Philox draw per 4)
static_assert(kMaxRaceVocab / kChunk <= 65535, "chunks ride the grid's y axis");

// (score, index) with ties to the smaller index; a NaN score never wins.
__device__ __forceinline__ bool better(float s, int64_t i, float best, int64_t best_i) {
  return s > best || (s == best && i < best_i);
}

// A (score, index) candidate as one integer that orders as better() does: the score's bits made
// monotonic in the high word (-0 folded into +0, which compare equal), the index's complement in
// the low word (a smaller index wins a tie). 0 = no candidate (every score NaN); any real score,
// -inf included, packs above 0. Indices fit 32 bits (the binding's vocab is far smaller).
__device__ __forceinline__ unsigned long long pack(float s, int64_t i) {
  const uint32_t u = __float_as_uint(s + 0.0f);  // -0 + +0 = +0
  const uint32_t key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
}

// grid (rows, chunks). slots[r] must be 0 on entry (a memset before the launch).
template <typename T>
__global__ void __launch_bounds__(kThreads)
exponential_race_kernel(unsigned long long* __restrict__ slots,  // [R] packed winners
                        const T* __restrict__ logits,             // [R, V], row stride
                        const float* __restrict__ inv_temperature,  // [R]
                        const int32_t* __restrict__ greedy,       // [R]
                        int64_t stride, int64_t vocab, uint64_t seed, uint64_t step) {
  __shared__ unsigned long long warp_best[kThreads / 32];
  const int64_t r = blockIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kChunk;
  const int64_t end = begin + kChunk < vocab ? begin + kChunk : vocab;
  const T* x = logits + r * stride;
  const bool is_greedy = greedy[r] != 0;
  const float inv_t = inv_temperature[r];
  const auto k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  float best = -INFINITY;
  int64_t best_i = INT64_MAX;
  for (int64_t i0 = begin + static_cast<int64_t>(threadIdx.x) * 4; i0 < end; i0 += kThreads * 4) {
    Philox4 bits{};
    if (!is_greedy) {
      bits = philox4x32_10(Philox4{{static_cast<uint32_t>(i0 / 4), static_cast<uint32_t>(r),
                                    static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32)}},
                           k0, k1);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (i0 + e < end) {
        const float l = cuda::to_float(x[i0 + e]);
        const float s = is_greedy ? l : __fsub_rn(__fmul_rn(l, inv_t), logf(-logf(unit_open(bits.v[e]))));
        if (better(s, i0 + e, best, best_i)) {
          best = s;
          best_i = i0 + e;
        }
      }
    }
  }
  unsigned long long packed = best_i == INT64_MAX ? 0ull : pack(best, best_i);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, packed, o);
    packed = other > packed ? other : packed;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_best[warp] = packed;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) packed = warp_best[w] > packed ? warp_best[w] : packed;
    if (packed != 0ull) atomicMax(slots + r, packed);
  }
}

// In place: slots [R] packed winners -> out [R] token ids (0 where no score was a number, as the
// CPU twin). Same memory: each thread reads its slot before writing it.
__global__ void unpack_winners_kernel(int64_t* __restrict__ out, int64_t num_rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= num_rows) return;
  const auto packed = static_cast<unsigned long long>(out[r]);
  out[r] = packed == 0ull ? 0 : static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(packed));
}

}  // namespace

void exponential_race_sample_cuda(const ExponentialRaceArgs& a) {
  if (a.num_rows == 0) return;
  cudaStream_t stream = cuda::as_stream(a.stream);
  // The packed winners live in `out` itself (int64 and u64 have one size) until unpacked.
  auto* slots = reinterpret_cast<unsigned long long*>(a.out);
  cudaMemsetAsync(slots, 0, static_cast<size_t>(a.num_rows) * sizeof(int64_t), stream);
  cuda::check_launch("exponential_race_sample (clear)");
  const auto chunks = static_cast<unsigned>((a.vocab + kChunk - 1) / kChunk);  // <= 65535 (y)
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    exponential_race_kernel<T><<<dim3(static_cast<unsigned>(a.num_rows), chunks), kThreads, 0, stream>>>(
        slots, static_cast<const T*>(a.logits), a.inv_temperature, a.greedy, a.logits_stride, a.vocab,
        a.seed, a.step);
  });
  cuda::check_launch("exponential_race_sample");
  const int threads = 128;
  unpack_winners_kernel<<<static_cast<unsigned>((a.num_rows + threads - 1) / threads), threads, 0, stream>>>(
      a.out, a.num_rows);
  cuda::check_launch("exponential_race_sample (unpack)");
}

}  // namespace pagedllm::kernels
