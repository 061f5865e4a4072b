// Shared device helpers for pagedllm's CUDA kernels: dtype traits, vector loads, error checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/kernel_args.h"

namespace pagedllm::kernels::cuda {

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": CUDA error: " + cudaGetErrorString(err));
  }
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float f);
template <> __device__ __forceinline__ float from_float<float>(float f) { return f; }
template <> __device__ __forceinline__ __half from_float<__half>(float f) { return __float2half_rn(f); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float f) {
  return __float2bfloat16_rn(f);
}

// N elements of T moved as one aligned word of N * sizeof(T) bytes (N * sizeof(T) in {2,4,8,16}).
template <int Bytes> struct Word;
template <> struct Word<2> { using type = unsigned short; };
template <> struct Word<4> { using type = unsigned int; };
template <> struct Word<8> { using type = uint2; };
template <> struct Word<16> { using type = uint4; };

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* src, float (&dst)[N]) {
  static_assert(sizeof(T) * N <= 16 && (sizeof(T) * N & (sizeof(T) * N - 1)) == 0, "word size");
  Vec<T, N> tmp;
  *reinterpret_cast<typename Word<sizeof(T) * N>::type*>(&tmp) =
      *reinterpret_cast<const typename Word<sizeof(T) * N>::type*>(src);
#pragma unroll
  for (int i = 0; i < N; ++i) dst[i] = to_float(tmp.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* dst, const float (&src)[N]) {
  Vec<T, N> tmp;
#pragma unroll
  for (int i = 0; i < N; ++i) tmp.v[i] = from_float<T>(src[i]);
  *reinterpret_cast<typename Word<sizeof(T) * N>::type*>(dst) =
      *reinterpret_cast<const typename Word<sizeof(T) * N>::type*>(&tmp);
}

// Calls fn with a typed null pointer for float / __half / __nv_bfloat16.
template <typename Fn>
inline void dispatch_float_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(static_cast<float*>(nullptr)); break;
    case DType::kFloat16: fn(static_cast<__half*>(nullptr)); break;
    case DType::kBFloat16: fn(static_cast<__nv_bfloat16*>(nullptr)); break;
    default: throw std::invalid_argument("unsupported dtype");
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch /* [32] */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x >> 5;
  float t = lane < nwarps ? scratch[lane] : 0.0f;
  return warp_sum(t);
}

}  // namespace pagedllm::kernels::cuda
