// reshape_and_cache on CUDA: one CTA per token; threads copy 16-byte words of the token's
// [num_kv_heads * head_dim] K and V rows, so a warp writes 512 contiguous bytes (coalesced).
#include "kernels/cuda_common.cuh"
#include "kernels/reshape_and_cache.h"

#include <algorithm>

namespace pagedllm::kernels {
namespace {

template <typename Word>
__global__ void reshape_and_cache_kernel(const char* __restrict__ key,    // [T, row] bytes
                                         const char* __restrict__ value,  // [T, row] bytes
                                         char* __restrict__ cache,        // [2, slots, row] bytes
                                         const int32_t* __restrict__ slot_mapping,  // [T]
                                         int64_t key_stride_bytes, int64_t value_stride_bytes,
                                         int64_t row_bytes, int64_t plane_bytes) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  const int64_t words = row_bytes / sizeof(Word);
  const Word* k = reinterpret_cast<const Word*>(key + t * key_stride_bytes);
  const Word* v = reinterpret_cast<const Word*>(value + t * value_stride_bytes);
  Word* kc = reinterpret_cast<Word*>(cache + slot * row_bytes);
  Word* vc = reinterpret_cast<Word*>(cache + plane_bytes + slot * row_bytes);
  for (int64_t i = threadIdx.x; i < words; i += blockDim.x) {
    kc[i] = k[i];
    vc[i] = v[i];
  }
}

}  // namespace

void reshape_and_cache_cuda(const ReshapeAndCacheArgs& a) {
  if (a.num_tokens == 0) return;
  const int64_t elem = dtype_size(a.dtype);
  const int64_t row_bytes = static_cast<int64_t>(a.num_kv_heads) * a.head_dim * elem;
  const int64_t plane_bytes = a.num_blocks * a.block_size * row_bytes;
  const int64_t ks = a.key_stride * elem, vs = a.value_stride * elem;
  const auto k = static_cast<const char*>(a.key);
  const auto v = static_cast<const char*>(a.value);
  auto c = static_cast<char*>(a.kv_cache);
  const auto aligned = [&](int64_t w) {
    return row_bytes % w == 0 && ks % w == 0 && vs % w == 0 &&
           reinterpret_cast<uintptr_t>(k) % w == 0 && reinterpret_cast<uintptr_t>(v) % w == 0 &&
           reinterpret_cast<uintptr_t>(c) % w == 0;
  };
  const dim3 grid(static_cast<unsigned>(a.num_tokens));
  cudaStream_t s = cuda::as_stream(a.stream);
  if (aligned(16)) {
    const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, row_bytes / 16)));
    reshape_and_cache_kernel<uint4><<<grid, threads, 0, s>>>(k, v, c, a.slot_mapping, ks, vs, row_bytes, plane_bytes);
  } else if (aligned(4)) {
    reshape_and_cache_kernel<unsigned int><<<grid, 256, 0, s>>>(k, v, c, a.slot_mapping, ks, vs, row_bytes, plane_bytes);
  } else {
    reshape_and_cache_kernel<unsigned short><<<grid, 256, 0, s>>>(k, v, c, a.slot_mapping, ks, vs, row_bytes, plane_bytes);
  }
  cuda::check_launch("reshape_and_cache");
}

}  // namespace pagedllm::kernels
