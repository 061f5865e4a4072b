// rotary_embedding on CUDA: one CTA per token; each thread rotates (head, pair) items of query
// and key. Positions must lie in [0, max_position): the CPU path checks; on CUDA it is the
// caller's contract (checking device memory would cost a sync).
#include <algorithm>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/rotary_embedding.h"

namespace pagedllm::kernels {
namespace {

using cuda::from_float;
using cuda::to_float;

template <typename T, typename C>
__global__ void rotary_kernel(const void* __restrict__ positions,  // [T] int32 / int64
                              bool positions_int64,
                              T* __restrict__ query,               // [T, Hq * head_size]
                              T* __restrict__ key,                 // [T, Hkv * head_size]
                              const C* __restrict__ cos_sin,       // [max_pos, rot_dim]
                              int64_t q_stride, int64_t k_stride, int num_q_heads,
                              int num_kv_heads, int head_size, int rot_dim, bool neox) {
  const int64_t t = blockIdx.x;
  const int64_t pos = positions_int64 ? static_cast<const int64_t*>(positions)[t]
                                      : static_cast<const int32_t*>(positions)[t];
  const C* cs = cos_sin + pos * rot_dim;
  const int half = rot_dim / 2;
  const int items = (num_q_heads + num_kv_heads) * half;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int h = it / half, i = it - h * half;
    T* xh = h < num_q_heads ? query + t * q_stride + static_cast<int64_t>(h) * head_size
                            : key + t * k_stride + static_cast<int64_t>(h - num_q_heads) * head_size;
    const int i1 = neox ? i : 2 * i;
    const int i2 = neox ? i + half : 2 * i + 1;
    const float c = to_float(cs[i]), s = to_float(cs[half + i]);
    const float x1 = to_float(xh[i1]), x2 = to_float(xh[i2]);
    xh[i1] = from_float<T>(x1 * c - x2 * s);
    xh[i2] = from_float<T>(x2 * c + x1 * s);
  }
}

}  // namespace

void rotary_embedding_cuda(const RotaryEmbeddingArgs& a) {
  if (a.num_tokens == 0) return;
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const int items = (a.num_q_heads + a.num_kv_heads) * (a.rot_dim / 2);
    const int threads = std::max(32, std::min(512, (items + 31) / 32 * 32));
    const dim3 grid(static_cast<unsigned>(a.num_tokens));
    cudaStream_t s = cuda::as_stream(a.stream);
    const bool p64 = a.positions_dtype == DType::kInt64;
    if (a.cache_dtype == DType::kFloat32) {
      rotary_kernel<T, float><<<grid, threads, 0, s>>>(
          a.positions, p64, static_cast<T*>(a.query), static_cast<T*>(a.key),
          static_cast<const float*>(a.cos_sin_cache), a.query_stride, a.key_stride, a.num_q_heads,
          a.num_kv_heads, a.head_size, a.rot_dim, a.is_neox);
    } else {
      rotary_kernel<T, T><<<grid, threads, 0, s>>>(
          a.positions, p64, static_cast<T*>(a.query), static_cast<T*>(a.key),
          static_cast<const T*>(a.cos_sin_cache), a.query_stride, a.key_stride, a.num_q_heads,
          a.num_kv_heads, a.head_size, a.rot_dim, a.is_neox);
    }
  });
  cuda::check_launch("rotary_embedding");
}

}  // namespace pagedllm::kernels
