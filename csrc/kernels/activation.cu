// silu_and_mul on CUDA: a grid-stride loop over [rows, d / V] vectors (16-byte loads when aligned).
#include <algorithm>
#include <type_traits>

#include "kernels/activation.h"
#include "kernels/cuda_common.cuh"

namespace pagedllm::kernels {
namespace {

template <typename T, int V>
__global__ void silu_and_mul_kernel(T* __restrict__ out,      // [rows, d]
                                    const T* __restrict__ x,  // [rows, 2 * d]
                                    int64_t rows, int64_t d) {
  const int64_t vecs_per_row = d / V;
  const int64_t total = rows * vecs_per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / vecs_per_row, c = (i - r * vecs_per_row) * V;
    float g[V], u[V];
    cuda::load_vec<T, V>(x + r * 2 * d + c, g);
    cuda::load_vec<T, V>(x + r * 2 * d + d + c, u);
#pragma unroll
    for (int j = 0; j < V; ++j) g[j] = g[j] / (1.0f + __expf(-g[j])) * u[j];
    cuda::store_vec<T, V>(out + r * d + c, g);
  }
}

}  // namespace

void silu_and_mul_cuda(const SiluAndMulArgs& a) {
  if (a.num_rows == 0 || a.d == 0) return;
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = 16 / sizeof(T);
    const bool vec = a.d % V == 0 && reinterpret_cast<uintptr_t>(a.x) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
    const int threads = 256;
    cudaStream_t s = cuda::as_stream(a.stream);
    const int64_t total = a.num_rows * (vec ? a.d / V : a.d);
    const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65535));
    if (vec) {
      silu_and_mul_kernel<T, V><<<blocks, threads, 0, s>>>(static_cast<T*>(a.out),
                                                           static_cast<const T*>(a.x), a.num_rows, a.d);
    } else {
      silu_and_mul_kernel<T, 1><<<blocks, threads, 0, s>>>(static_cast<T*>(a.out),
                                                           static_cast<const T*>(a.x), a.num_rows, a.d);
    }
  });
  cuda::check_launch("silu_and_mul");
}

}  // namespace pagedllm::kernels
