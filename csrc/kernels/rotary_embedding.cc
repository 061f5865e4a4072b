// CPU twin of rotary_embedding: per token, one float copy of the cos|sin row, then each head
// (normalized first when norm weights are given); with a KV cache, reshape_and_cache's twin
// then copies the rotated key and the value into it.
#include "kernels/rotary_embedding.h"

#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu_dtype.h"
#include "kernels/reshape_and_cache.h"

namespace pagedllm::kernels {
namespace {

// head <- round(head / sqrt(mean(head^2) + eps) * weight), as rms_norm rounds its output.
template <typename T>
void normalize_head(T* xh /* [head_size] */, const T* weight /* [head_size] */, int head_size,
                    float eps) {
  float sumsq = 0.0f;
  for (int j = 0; j < head_size; ++j) sumsq += cpu::to_float(xh[j]) * cpu::to_float(xh[j]);
  const float inv = 1.0f / std::sqrt(sumsq / head_size + eps);
  for (int j = 0; j < head_size; ++j) {
    xh[j] = cpu::from_float<T>(cpu::to_float(xh[j]) * inv * cpu::to_float(weight[j]));
  }
}

template <typename T>
void rotate_heads(T* x /* [heads, head_size] */, int heads, int head_size, int rot_dim,
                  const float* cs /* [rot_dim] */, bool neox,
                  const T* norm_weight /* [head_size] or null */, float eps) {
  const int half = rot_dim / 2;
  for (int h = 0; h < heads; ++h) {
    T* xh = x + static_cast<int64_t>(h) * head_size;
    if (norm_weight != nullptr) normalize_head(xh, norm_weight, head_size, eps);
    for (int i = 0; i < half; ++i) {
      const int i1 = neox ? i : 2 * i;
      const int i2 = neox ? i + half : 2 * i + 1;
      const float x1 = cpu::to_float(xh[i1]), x2 = cpu::to_float(xh[i2]);
      const float c = cs[i], s = cs[half + i];
      xh[i1] = cpu::from_float<T>(x1 * c - x2 * s);
      xh[i2] = cpu::from_float<T>(x2 * c + x1 * s);
    }
  }
}

}  // namespace

void rotary_embedding_cpu(const RotaryEmbeddingArgs& a) {
  cpu::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    std::vector<float> cs(a.rot_dim);  // [rot_dim] cos | sin of this token's position
    for (int64_t t = 0; t < a.num_tokens; ++t) {
      const int64_t pos = a.positions_dtype == DType::kInt64
                              ? static_cast<const int64_t*>(a.positions)[t]
                              : static_cast<const int32_t*>(a.positions)[t];
      cpu::dispatch_float_type(a.cache_dtype, [&](auto* ctag) {
        using C = std::remove_pointer_t<decltype(ctag)>;
        const C* row = static_cast<const C*>(a.cos_sin_cache) + pos * a.rot_dim;
        for (int i = 0; i < a.rot_dim; ++i) cs[i] = cpu::to_float(row[i]);
      });
      rotate_heads(static_cast<T*>(a.query) + t * a.query_stride, a.num_q_heads, a.head_size,
                   a.rot_dim, cs.data(), a.is_neox, static_cast<const T*>(a.q_norm_weight),
                   a.norm_eps);
      rotate_heads(static_cast<T*>(a.key) + t * a.key_stride, a.num_kv_heads, a.head_size,
                   a.rot_dim, cs.data(), a.is_neox, static_cast<const T*>(a.k_norm_weight),
                   a.norm_eps);
    }
  });
  if (a.kv_write.kv_cache != nullptr) reshape_and_cache_cpu(a.kv_write);
}

}  // namespace pagedllm::kernels
