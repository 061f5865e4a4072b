// exponential_race_sample on CUDA: each row is cut into chunks of kChunk elements, one CTA per
// (row, chunk), so that a batch of any size fills the GPU (one CTA per row left most SMs idle
// for small batches and took 153 us for 244 x 151,936 on an H200). A CTA streams its chunk (4
// elements and one Philox draw per thread per iteration), keeps a per-thread best (score, index),
// reduces over the block and folds its winner into the row's slot with one 64-bit atomicMax on a
// packed key; a last kernel unpacks the slots into token ids. The float math matches the CPU twin
// (no fused multiply-add in the score), and the packed order is the twin's order, so the token is
// the same whatever the chunking.
//
// Most elements cannot win, and the two accurate logf of their noise were most of the kernel's
// time. An element's score is l / T - log(-log u); since -log u >= 1 - u, log(-log u) is at least
// log(1 - u), and a lower bound of that comes from the float bits of 1 - u with integer and FMA
// work only (noise_log_floor). An element whose score cannot reach the best score its warp has
// already computed is skipped: it cannot be the row's winner, so the token is still exactly the
// twin's. H200, 244 x 151,936 bf16 logits: 138 -> 95 us (benchmarks/kernels/sampler_shapes.py);
// issuing all of a thread's loads first (48 registers instead of 32) was slower: 104-119 us.
// 32-bit indices and one 8-byte load per group of four bf16 logits (aligned rows): 86-87 us
// (89 us element by element on the same machine; unrolling the loop twice gained nothing).
#include <cstdint>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/philox.h"
#include "kernels/sampling.h"

namespace pagedllm::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 8192;  // elements per CTA: a multiple of 4 (one Philox draw per 4)
static_assert(kMaxRaceVocab / kChunk <= 65535, "chunks ride the grid's y axis");

// (score, index) with ties to the smaller index; a NaN score never wins.
__device__ __forceinline__ bool better(float s, int i, float best, int best_i) {
  return s > best || (s == best && i < best_i);
}

// A (score, index) candidate as one integer that orders as better() does: the score's bits made
// monotonic in the high word (-0 folded into +0, which compare equal), the index's complement in
// the low word (a smaller index wins a tie). 0 = no candidate (every score NaN); any real score,
// -inf included, packs above 0. Indices fit 32 bits (the binding's vocab is far smaller).
__device__ __forceinline__ unsigned long long pack(float s, int i) {
  const uint32_t u = __float_as_uint(s + 0.0f);  // -0 + +0 = +0
  const uint32_t key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(key) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
}

// A lower bound of log(-log u) for u = unit_open(bits), at most ~0.06 + log(-log(u) / (1 - u))
// below it: small where the noise is large (u near 1), which is where elements come close to the
// lead. With k = bits >> 9, v = (1 - u) * 2^23 = 2^23 - k - 1/2 exactly in float, and
// log(-log u) >= log(1 - u) = ln2 * (log2 v - 23) >= ln2 * (e + f - 23) for v = 2^e * (1 + f),
// 0 <= f < 1 (log2(1 + f) >= f on [0, 1]). e + f is v's bit pattern read as an integer, times
// 2^-23, minus 127. The int -> float conversion rounds it by at most 2^-17, the two FMAs by ~2^-19
// each, and the logf path the kernel computes for real is within ~1e-5 of the exact noise (1 ulp
// per logf); the 1e-4 subtracted covers all of these, so floor <= the kernel's own
// logf(-logf(u)) for every draw.
__device__ __forceinline__ float noise_log_floor(uint32_t bits) {
  const float v = static_cast<float>(8388608u - (bits >> 9)) - 0.5f;  // (1 - u) * 2^23, exact
  const float log2_v = __fmaf_rn(static_cast<float>(__float_as_int(v)), 1.0f / 8388608.0f, -127.0f - 23.0f);
  return __fmaf_rn(log2_v, 0.6931471805599453f, -1e-4f);
}

// The four logits of one Philox draw, as floats; NaN past the row's end (a NaN never wins).
// kWordLoads: the row start and the chunk are aligned to 4 elements (the launcher checks the
// pointer and the stride), so a whole group is one 8- or 16-byte load.
template <typename T, bool kWordLoads>
__device__ __forceinline__ void load_group(const T* x, int i0, int end, float (&l)[4]) {
  if (kWordLoads && i0 + 3 < end) {
    cuda::load_vec<T, 4>(x + i0, l);
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) l[e] = i0 + e < end ? cuda::to_float(x[i0 + e]) : __int_as_float(0x7fc00000);
}

// grid (rows, chunks). slots[r] must be 0 on entry (a memset before the launch). Indices are
// 32-bit: the vocabulary is at most kMaxRaceVocab < 2^31.
template <typename T, bool kWordLoads>
__global__ void __launch_bounds__(kThreads)
exponential_race_kernel(unsigned long long* __restrict__ slots,  // [R] packed winners
                        const T* __restrict__ logits,             // [R, V], row stride
                        const float* __restrict__ inv_temperature,  // [R]
                        const int32_t* __restrict__ greedy,       // [R]
                        int64_t stride, int vocab, uint64_t seed, uint64_t step) {
  __shared__ unsigned long long warp_best[kThreads / 32];
  const int r = blockIdx.x;
  const int begin = static_cast<int>(blockIdx.y) * kChunk;
  const int end = vocab - begin > kChunk ? begin + kChunk : vocab;
  const T* x = logits + static_cast<int64_t>(r) * stride;
  const bool is_greedy = greedy[r] != 0;
  const float inv_t = inv_temperature[r];
  const auto k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  float best = -INFINITY;
  int best_i = INT32_MAX;
  // Warp-uniform: the best score any lane of this warp has computed (-inf: none yet). Every
  // lane runs the same number of iterations (the loop bound is the CTA's), so the shuffles that
  // refresh it see the whole warp.
  float warp_lead = -INFINITY;
  for (int base = begin; base < end; base += kThreads * 4) {
    const int i0 = base + static_cast<int>(threadIdx.x) * 4;
    float l[4];
    load_group<T, kWordLoads>(x, i0, end, l);
    Philox4 bits{};
    if (!is_greedy) {
      bits = philox4x32_10(Philox4{{static_cast<uint32_t>(i0 / 4), static_cast<uint32_t>(r),
                                    static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32)}},
                           k0, k1);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float s = l[e];
      if (!is_greedy) {
        const float scaled = __fmul_rn(l[e], inv_t);
        // scaled - floor >= the score (rounding is monotone), so below the lead it cannot win
        // (a NaN score fails the test and is skipped: it never wins either).
        if (!(__fsub_rn(scaled, noise_log_floor(bits.v[e])) >= warp_lead)) continue;
        s = __fsub_rn(scaled, logf(-logf(unit_open(bits.v[e]))));
      }
      if (better(s, i0 + e, best, best_i)) {
        best = s;
        best_i = i0 + e;
      }
    }
    if (!is_greedy) warp_lead = cuda::warp_max(best);
  }
  unsigned long long packed = best_i == INT32_MAX ? 0ull : pack(best, best_i);
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
  const dim3 grid(static_cast<unsigned>(a.num_rows), chunks);
  // Word loads need every row start aligned to 4 elements: the base pointer and the stride.
  const auto elem = static_cast<uintptr_t>(dtype_size(a.dtype));
  const bool word_loads = reinterpret_cast<uintptr_t>(a.logits) % (4 * elem) == 0 &&
                          static_cast<uint64_t>(a.logits_stride) % 4 == 0;
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto* kernel = word_loads ? exponential_race_kernel<T, true> : exponential_race_kernel<T, false>;
    kernel<<<grid, kThreads, 0, stream>>>(slots, static_cast<const T*>(a.logits), a.inv_temperature, a.greedy,
                                          a.logits_stride, static_cast<int>(a.vocab), a.seed, a.step);
  });
  cuda::check_launch("exponential_race_sample");
  const int threads = 128;
  unpack_winners_kernel<<<static_cast<unsigned>((a.num_rows + threads - 1) / threads), threads, 0, stream>>>(
      a.out, a.num_rows);
  cuda::check_launch("exponential_race_sample (unpack)");
}

}  // namespace pagedllm::kernels
