// RMSNorm kernels: one CTA per row (fused_add_rms_norm may sum a split-K GEMM's float32
// partials in place of reading x). Pass 1 sums squares (16-byte loads when aligned), a block
// reduction gives 1/rms, pass 2 rereads the row (L1/L2 hit) and writes the scaled output; the
// fused kernel keeps the row in registers instead when it fits one word per thread.
#include <algorithm>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/rms_norm.h"

namespace pagedllm::kernels {
namespace {

using cuda::from_float;
using cuda::to_float;
using cuda::load_vec;
using cuda::store_vec;

template <typename T, int V>
__global__ void rms_norm_kernel(T* __restrict__ out,          // [rows, hidden] stride out_stride
                                const T* __restrict__ x,      // [rows, hidden] stride x_stride
                                const T* __restrict__ w,      // [hidden]
                                int64_t x_stride, int64_t out_stride, int hidden, float eps) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * x_stride;
  T* orow = out + blockIdx.x * out_stride;
  float sumsq = 0.0f;
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float v[V];
    load_vec<T, V>(xr + i, v);
#pragma unroll
    for (int j = 0; j < V; ++j) sumsq += v[j] * v[j];
  }
  const float inv = rsqrtf(cuda::block_sum(sumsq, scratch) / hidden + eps);
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float v[V], wv[V];
    load_vec<T, V>(xr + i, v);
    load_vec<T, V>(w + i, wv);
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = (v[j] * inv) * wv[j];
    store_vec<T, V>(orow + i, v);
  }
}

// V float32 values of each of the S partial planes at the same offset, summed in plane order and
// rounded to T: what the unsplit GEMM would have written.
template <typename T, int V>
__device__ __forceinline__ void load_summed_partials(const float* p, int64_t plane, int num_partials,
                                                     float (&out)[V]) {
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = 0.0f;
  constexpr int kWord = V < 4 ? V : 4;  // floats per load: 16 bytes at most
  for (int s = 0; s < num_partials; ++s) {
#pragma unroll
    for (int c = 0; c < V; c += kWord) {
      float v[kWord];
      load_vec<float, kWord>(p + s * plane + c, v);
#pragma unroll
      for (int j = 0; j < kWord; ++j) out[c + j] += v[j];
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = to_float(from_float<T>(out[j]));
}

// kPartials: the added value comes from partials [S, rows, hidden] (float32) instead of x, and x
// is only written. kOneWord: every thread holds at most one word of V elements (hidden <= V x
// threads), so the sum, its residual and the weight stay in registers across the reduction: one
// dependent memory round trip per row instead of two (the decode-size kernel is latency-bound:
// H200, hidden 1024, 16-244 rows: 1.96-2.33 -> 1.71-2.04 us, 2.19 -> 2.01 us in W-nano's step).
template <typename T, int V, bool kPartials, bool kOneWord>
__global__ void fused_add_rms_norm_kernel(T* __restrict__ x,         // [rows, hidden]
                                          T* __restrict__ residual,  // [rows, hidden]
                                          const T* __restrict__ w,   // [hidden]
                                          const float* __restrict__ partials,  // [S, rows, hidden]
                                          int num_partials,
                                          int64_t x_stride, int64_t r_stride, int hidden, float eps) {
  __shared__ float scratch[32];
  T* xr = x + blockIdx.x * x_stride;
  T* rr = residual + blockIdx.x * r_stride;
  const int64_t plane = static_cast<int64_t>(gridDim.x) * hidden;
  // a = residual + (x or the summed partials), rounded to T as the reference; stored as the new
  // residual. Returns its sum of squares.
  const auto add_word = [&](int i, float (&a)[V]) {
    float b[V];
    if constexpr (kPartials) {
      load_summed_partials<T, V>(partials + blockIdx.x * static_cast<int64_t>(hidden) + i, plane,
                                 num_partials, a);
    } else {
      load_vec<T, V>(xr + i, a);
    }
    load_vec<T, V>(rr + i, b);
    float sumsq = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      a[j] = to_float(from_float<T>(a[j] + b[j]));
      sumsq += a[j] * a[j];
    }
    store_vec<T, V>(rr + i, a);
    return sumsq;
  };
  if constexpr (kOneWord) {
    const int i = threadIdx.x * V;
    const bool active = i < hidden;
    float a[V], wv[V];
    float sumsq = 0.0f;
    if (active) {
      load_vec<T, V>(w + i, wv);  // issued with the row's loads, used after the reduction
      sumsq = add_word(i, a);
    }
    const float inv = rsqrtf(cuda::block_sum(sumsq, scratch) / hidden + eps);
    if (active) {
#pragma unroll
      for (int j = 0; j < V; ++j) a[j] = (a[j] * inv) * wv[j];
      store_vec<T, V>(xr + i, a);
    }
    return;
  }
  float sumsq = 0.0f;
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float a[V];
    sumsq += add_word(i, a);
  }
  const float inv = rsqrtf(cuda::block_sum(sumsq, scratch) / hidden + eps);
  // Each thread rereads only the residual words it wrote itself: no barrier needed.
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float v[V], wv[V];
    load_vec<T, V>(rr + i, v);
    load_vec<T, V>(w + i, wv);
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = (v[j] * inv) * wv[j];
    store_vec<T, V>(xr + i, v);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int threads_for(int hidden, int v) {
  const int need = (hidden / v + 31) / 32 * 32;
  return std::max(32, std::min(1024, need));
}

}  // namespace

void rms_norm_cuda(const RmsNormArgs& a) {
  if (a.num_rows == 0) return;
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = 16 / sizeof(T);
    const bool vec = a.hidden % V == 0 && a.x_stride % V == 0 && a.out_stride % V == 0 &&
                     aligned16(a.x) && aligned16(a.out) && aligned16(a.weight);
    cudaStream_t s = cuda::as_stream(a.stream);
    const dim3 grid(static_cast<unsigned>(a.num_rows));
    if (vec) {
      rms_norm_kernel<T, V><<<grid, threads_for(a.hidden, V), 0, s>>>(
          static_cast<T*>(a.out), static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
          a.x_stride, a.out_stride, a.hidden, a.eps);
    } else {
      rms_norm_kernel<T, 1><<<grid, threads_for(a.hidden, 1), 0, s>>>(
          static_cast<T*>(a.out), static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
          a.x_stride, a.out_stride, a.hidden, a.eps);
    }
  });
  cuda::check_launch("rms_norm");
}

void fused_add_rms_norm_cuda(const FusedAddRmsNormArgs& a) {
  if (a.num_rows == 0) return;
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = 16 / sizeof(T);
    const bool vec = a.hidden % V == 0 && a.x_stride % V == 0 && a.residual_stride % V == 0 &&
                     aligned16(a.x) && aligned16(a.residual) && aligned16(a.weight) &&
                     (a.partials == nullptr || aligned16(a.partials));
    cudaStream_t s = cuda::as_stream(a.stream);
    const dim3 grid(static_cast<unsigned>(a.num_rows));
    auto run = [&](auto vec_tag, auto partials_tag) {
      constexpr int kV = decltype(vec_tag)::value;
      constexpr bool kPartials = decltype(partials_tag)::value;
      const int threads = threads_for(a.hidden, kV);
      auto* kernel = threads * kV >= a.hidden ? fused_add_rms_norm_kernel<T, kV, kPartials, true>
                                              : fused_add_rms_norm_kernel<T, kV, kPartials, false>;
      kernel<<<grid, threads, 0, s>>>(
          static_cast<T*>(a.x), static_cast<T*>(a.residual), static_cast<const T*>(a.weight),
          a.partials, a.num_partials, a.x_stride, a.residual_stride, a.hidden, a.eps);
    };
    using Vec = std::integral_constant<int, V>;
    using Scalar = std::integral_constant<int, 1>;
    const bool with_partials = a.partials != nullptr;
    if (vec && with_partials) run(Vec{}, std::true_type{});
    else if (vec) run(Vec{}, std::false_type{});
    else if (with_partials) run(Scalar{}, std::true_type{});
    else run(Scalar{}, std::false_type{});
  });
  cuda::check_launch("fused_add_rms_norm");
}

}  // namespace pagedllm::kernels
