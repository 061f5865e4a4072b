// CPU twin of reshape_and_cache: one memcpy per (token, K or V); dtypes match, so no conversion.
#include "kernels/reshape_and_cache.h"

#include <cstring>

namespace pagedllm::kernels {

void reshape_and_cache_cpu(const ReshapeAndCacheArgs& a) {
  const int64_t elem = dtype_size(a.dtype);
  const int64_t row = static_cast<int64_t>(a.num_kv_heads) * a.head_dim;  // elements per token
  const int64_t half = a.num_blocks * a.block_size * row;                  // K plane size
  char* cache = static_cast<char*>(a.kv_cache);
  const char* key = static_cast<const char*>(a.key);
  const char* value = static_cast<const char*>(a.value);
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const int64_t slot = a.slot_mapping[t];
    if (slot < 0) continue;
    std::memcpy(cache + slot * row * elem, key + t * a.key_stride * elem, row * elem);
    std::memcpy(cache + (half + slot * row) * elem, value + t * a.value_stride * elem, row * elem);
  }
}

}  // namespace pagedllm::kernels
