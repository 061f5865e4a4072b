// CPU twin of paged_attention (the CPU engine's attention path). Per (sequence, KV head): the
// context's K and V rows are gathered from their pages into float buffers once, then each query
// token's group of heads scores the visible keys, softmaxes in float32 and sums the V rows.
// Inner loops are plain and unit-stride so the compiler vectorizes them (no OpenMP).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu_dtype.h"
#include "kernels/paged_attention.h"

namespace pagedllm::kernels {
namespace {

// Dot product with 8 independent partial sums (vectorizes without -ffast-math).
inline float dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

template <typename T>
void attention_typed(const PagedAttentionArgs& a) {
  const int D = a.head_dim, G = a.num_q_heads / a.num_kv_heads, BS = a.block_size;
  const int64_t row = static_cast<int64_t>(a.num_kv_heads) * D;  // elements per cache slot
  const int64_t plane = a.num_blocks * BS * row;
  const T* cache = static_cast<const T*>(a.kv_cache);
  const T* query = static_cast<const T*>(a.query);
  T* out = static_cast<T*>(a.out);
  std::vector<float> kf, vf;            // [ctx, D] this (sequence, KV head)'s keys / values
  std::vector<float> qf(D), acc(D);     // [D]
  std::vector<float> scores;            // [ctx]
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q_begin = a.query_start_loc[s];
    const int q_len = a.query_start_loc[s + 1] - q_begin;
    const int ctx = a.seq_lens[s];
    if (q_len == 0) continue;
    kf.resize(static_cast<size_t>(ctx) * D);
    vf.resize(static_cast<size_t>(ctx) * D);
    scores.resize(ctx);
    const int32_t* btab = a.block_table + static_cast<int64_t>(s) * a.max_blocks_per_seq;
    for (int h = 0; h < a.num_kv_heads; ++h) {
      for (int k = 0; k < ctx; ++k) {
        const int64_t slot = static_cast<int64_t>(btab[k / BS]) * BS + k % BS;
        const T* kr = cache + slot * row + static_cast<int64_t>(h) * D;
        const T* vr = kr + plane;
        float* kd = kf.data() + static_cast<size_t>(k) * D;
        float* vd = vf.data() + static_cast<size_t>(k) * D;
        for (int d = 0; d < D; ++d) kd[d] = cpu::to_float(kr[d]);
        for (int d = 0; d < D; ++d) vd[d] = cpu::to_float(vr[d]);
      }
      for (int j = 0; j < q_len; ++j) {
        const int pos = ctx - q_len + j;  // keys [lo, pos] are visible
        const int lo = a.sliding_window > 0 ? std::max(0, pos - a.sliding_window + 1) : 0;
        const int64_t t = q_begin + j;
        for (int g = 0; g < G; ++g) {
          const int hq = h * G + g;
          const T* qr = query + t * a.q_stride + static_cast<int64_t>(hq) * D;
          for (int d = 0; d < D; ++d) qf[d] = cpu::to_float(qr[d]);
          float m = -std::numeric_limits<float>::infinity();
          for (int k = lo; k <= pos; ++k) {
            scores[k] = dot(qf.data(), kf.data() + static_cast<size_t>(k) * D, D) * a.scale;
            m = std::max(m, scores[k]);
          }
          float sum = 0.0f;
          for (int k = lo; k <= pos; ++k) {
            scores[k] = std::exp(scores[k] - m);
            sum += scores[k];
          }
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int k = lo; k <= pos; ++k) {
            const float w = scores[k];
            const float* vd = vf.data() + static_cast<size_t>(k) * D;
            for (int d = 0; d < D; ++d) acc[d] += w * vd[d];
          }
          const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
          T* orow = out + (t * a.num_q_heads + hq) * D;
          for (int d = 0; d < D; ++d) orow[d] = cpu::from_float<T>(acc[d] * inv);
        }
      }
    }
  }
}

}  // namespace

void paged_attention_cpu(const PagedAttentionArgs& a) {
  cpu::dispatch_float_type(a.dtype, [&](auto* tag) {
    attention_typed<std::remove_pointer_t<decltype(tag)>>(a);
  });
}

}  // namespace pagedllm::kernels
