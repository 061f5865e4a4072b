// rotary_embedding on CUDA: one warp per (token, head), up to eight heads per CTA. With per-head
// norm weights the warp normalizes its head first; with a KV cache (kv_write) key heads are
// also stored at the token's slot and value heads copied there, so the layer needs no separate
// reshape_and_cache launch (one kernel and one inter-kernel gap fewer per layer; measured on an
// H200 at 244 Qwen3-0.6B tokens: 4.7 us for both jobs, 3.8 + 1.9 us as two kernels). Whole-head
// rotations of 64-256 dims take a register path (rotary_heads_vec_kernel): H200, 12th session,
// Qwen3-0.6B with norm and cache write, 4.77 -> 3.16 us at 244 tokens, 98.8 -> 57.6 us at 8,192
// (benchmarks/kernels/rotary_shapes.py); 4.70 -> 3.17 us per layer inside W-nano's decode step.
// Positions must lie in [0, max_position): the CPU path checks; on CUDA it is the
// caller's contract (checking device memory would cost a sync).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/rotary_embedding.h"

namespace pagedllm::kernels {
namespace {

using cuda::from_float;
using cuda::to_float;

constexpr int kMaxWarpsPerCta = 8;

// The cos | sin row of token t's position.
template <typename C>
__device__ __forceinline__ const C* cos_sin_row(const void* positions, bool positions_int64,
                                                const C* cos_sin, int64_t t, int rot_dim) {
  const int64_t pos = positions_int64 ? static_cast<const int64_t*>(positions)[t]
                                      : static_cast<const int32_t*>(positions)[t];
  return cos_sin + pos * rot_dim;
}

// Where head h of token t is read and written. Heads are numbered query heads first, then key
// heads, then (with a cache) value heads. xh: the q / k head rotated in place (null for a value
// head); cached: the row of the token's slot it also goes to (a key head's K row, a value
// head's V row; null without a cache or for a token without a slot); value: a value head's
// source row.
template <typename T>
struct HeadRows {
  T* xh = nullptr;
  T* cached = nullptr;
  const T* value = nullptr;
};

template <typename T, bool kWriteCache>
__device__ __forceinline__ HeadRows<T> head_rows(const RotaryEmbeddingArgs& a, int64_t t, int h,
                                                 int head_size) {
  HeadRows<T> r;
  if (h < a.num_q_heads) {
    r.xh = static_cast<T*>(a.query) + t * a.query_stride + static_cast<int64_t>(h) * head_size;
    return r;
  }
  const int rotated_heads = a.num_q_heads + a.num_kv_heads;
  const bool is_key = h < rotated_heads;
  const int kvh = is_key ? h - a.num_q_heads : h - rotated_heads;
  if (is_key) r.xh = static_cast<T*>(a.key) + t * a.key_stride + static_cast<int64_t>(kvh) * head_size;
  if constexpr (kWriteCache) {
    // cache: [2 (K, V), num_blocks * block_size, num_kv_heads, head_size]
    const int64_t slot = a.kv_write.slot_mapping[t];
    const int64_t row = static_cast<int64_t>(a.num_kv_heads) * head_size;  // elements per slot
    T* plane = static_cast<T*>(a.kv_write.kv_cache) +
               (is_key ? 0 : a.kv_write.num_blocks * a.kv_write.block_size * row);
    if (slot >= 0) r.cached = plane + slot * row + static_cast<int64_t>(kvh) * head_size;
    if (!is_key) {
      r.value = static_cast<const T*>(a.kv_write.value) + t * a.kv_write.value_stride +
                static_cast<int64_t>(kvh) * head_size;
    }
  }
  return r;
}

// kNorm: Qwen3's per-head RMSNorm first. The warp then needs every dim of its head before any
// rotation (the sum of squares), so it reads the head once (lane l: dims l, l + 32, ...; the
// loads are independent and in flight together) into shared memory, where the rotation finds
// the dims other lanes read. Reading the head from global memory again for the rotation put
// several dependent load rounds on every warp (4.6 us per Qwen3-0.6B layer at 244 tokens). Without
// the norm each lane reads the two dims of its pairs itself: nothing is staged.
template <typename T, typename C, bool kNorm, bool kWriteCache>
__global__ void rotary_heads_kernel(const RotaryEmbeddingArgs a, const int num_heads) {
  extern __shared__ float staged_heads[];  // kNorm: [warps per CTA, head_size]
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h = blockIdx.y * (blockDim.x >> 5) + warp;
  if (h >= num_heads) return;
  const int head_size = a.head_size;
  const HeadRows<T> rows = head_rows<T, kWriteCache>(a, t, h, head_size);
  if (rows.xh == nullptr) {  // a value head: copied as is into the V plane
    if (rows.cached != nullptr) {
      for (int j = lane; j < head_size; j += 32) rows.cached[j] = rows.value[j];
    }
    return;
  }
  const bool is_query = h < a.num_q_heads;
  T* const xh = rows.xh;
  T* const cached = rows.cached;  // key heads of a token with a slot: the rotated head goes here too
  const auto store = [&](int j, float v) {
    const T out = from_float<T>(v);
    xh[j] = out;
    if (kWriteCache && cached != nullptr) cached[j] = out;
  };
  float* staged = staged_heads + static_cast<int64_t>(warp) * head_size;  // kNorm only
  if constexpr (kNorm) {
    const T* w = static_cast<const T*>(is_query ? a.q_norm_weight : a.k_norm_weight);
    float sumsq = 0.0f;
#pragma unroll 4
    for (int j = lane; j < head_size; j += 32) {
      const float v = to_float(xh[j]);
      staged[j] = v;
      sumsq += v * v;
    }
    const float inv = rsqrtf(cuda::warp_sum(sumsq) / head_size + a.norm_eps);
    // The normalized element, rounded to T as rms_norm's output would be; each lane rewrites
    // only the dims it staged, so no barrier is needed before this pass.
#pragma unroll 4
    for (int j = lane; j < head_size; j += 32) {
      staged[j] = to_float(from_float<T>(staged[j] * inv * to_float(w[j])));
    }
    __syncwarp();
  }
  const auto value = [&](int j) { return kNorm ? staged[j] : to_float(xh[j]); };
  const C* cs = cos_sin_row(a.positions, a.positions_dtype == DType::kInt64,
                            static_cast<const C*>(a.cos_sin_cache), t, a.rot_dim);
  const int half = a.rot_dim / 2;
  for (int i = lane; i < half; i += 32) {
    const int i1 = a.is_neox ? i : 2 * i;
    const int i2 = a.is_neox ? i + half : 2 * i + 1;
    const float c = to_float(cs[i]), s = to_float(cs[half + i]);
    const float x1 = value(i1), x2 = value(i2);  // both read before either is stored
    store(i1, x1 * c - x2 * s);
    store(i2, x2 * c + x1 * s);
  }
  // Dims past rot_dim: unrotated (normalized with kNorm, untouched in place otherwise).
  for (int j = a.rot_dim + lane; j < head_size; j += 32) {
    if (kNorm) {
      store(j, staged[j]);
    } else if (kWriteCache && cached != nullptr) {
      cached[j] = xh[j];
    }
  }
}

// Register path for the common shape, the whole head rotated (rot_dim == head_size = 32 * E):
// lane l holds dims [l * E, (l + 1) * E) as one vector word, and every load the warp needs (its
// dims, their norm weights, their cos and sin) is issued before any arithmetic, so a warp waits
// for memory once instead of once per phase. NeoX pairs dim i with i + head_size / 2, i.e. lane l
// with lane l ^ 16 (a shuffle); GPT-J pairs 2i with 2i + 1, both in one lane. Nothing is staged
// in shared memory. The float math is the general kernel's, so outputs agree to rounding (the
// sum of squares is added in another order).
template <typename T, typename C, int E, bool kNorm, bool kWriteCache>
__global__ void rotary_heads_vec_kernel(const RotaryEmbeddingArgs a, const int num_heads) {
  constexpr int kHead = 32 * E, kHalf = kHead / 2;
  constexpr int kPairs = E / 2;  // GPT-J: the lane's pairs, hence its cos / sin entries
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h = blockIdx.y * (blockDim.x >> 5) + warp;
  if (h >= num_heads) return;
  const int d0 = lane * E;  // first dim of this lane
  const HeadRows<T> rows = head_rows<T, kWriteCache>(a, t, h, kHead);
  if (rows.xh == nullptr) {  // a value head: copied as is into the V plane, one word per lane
    if (rows.cached != nullptr) {
      using W = typename cuda::Word<E * sizeof(T)>::type;
      *reinterpret_cast<W*>(rows.cached + d0) = *reinterpret_cast<const W*>(rows.value + d0);
    }
    return;
  }
  const bool is_query = h < a.num_q_heads;
  T* const xh = rows.xh;
  const C* cs = cos_sin_row(a.positions, a.positions_dtype == DType::kInt64,
                            static_cast<const C*>(a.cos_sin_cache), t, kHead);
  float x[E], w[E];
  cuda::load_vec<T, E>(xh + d0, x);
  if constexpr (kNorm) {
    cuda::load_vec<T, E>(static_cast<const T*>(is_query ? a.q_norm_weight : a.k_norm_weight) + d0, w);
  }
  float c[E], s[E];  // NeoX: one cos / sin per dim; GPT-J: one per pair, the first kPairs
  if (a.is_neox) {
    cuda::load_vec<C, E>(cs + d0 % kHalf, c);
    cuda::load_vec<C, E>(cs + kHalf + d0 % kHalf, s);
  } else {
    float cp[kPairs], sp[kPairs];
    cuda::load_vec<C, kPairs>(cs + d0 / 2, cp);
    cuda::load_vec<C, kPairs>(cs + kHalf + d0 / 2, sp);
#pragma unroll
    for (int m = 0; m < kPairs; ++m) c[m] = cp[m], s[m] = sp[m];
  }
  if constexpr (kNorm) {
    float sumsq = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) sumsq += x[e] * x[e];
    const float inv = rsqrtf(cuda::warp_sum(sumsq) / kHead + a.norm_eps);
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = to_float(from_float<T>(x[e] * inv * w[e]));  // as rms_norm rounds
  }
  float out[E];
  if (a.is_neox) {
    const bool first_half = lane < 16;  // dims [0, half): x1 here, x2 in lane ^ 16
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float other = __shfl_xor_sync(0xffffffffu, x[e], 16);
      out[e] = first_half ? x[e] * c[e] - other * s[e] : x[e] * c[e] + other * s[e];
    }
  } else {
#pragma unroll
    for (int m = 0; m < kPairs; ++m) {
      const float x1 = x[2 * m], x2 = x[2 * m + 1];
      out[2 * m] = x1 * c[m] - x2 * s[m];
      out[2 * m + 1] = x2 * c[m] + x1 * s[m];
    }
  }
  cuda::store_vec<T, E>(xh + d0, out);
  if (kWriteCache && rows.cached != nullptr) cuda::store_vec<T, E>(rows.cached + d0, out);
}

// Whether the register path applies: full rotation, 32 * E dims with E in {2, 4, 8}, one vector
// word of T and of C per lane (<= 16 bytes), and every pointer and row stride aligned to it.
// PAGEDLLM_ROTARY_VEC=0 turns it off (read once; for A/B measurements).
template <typename T, typename C>
int vec_elements(const RotaryEmbeddingArgs& a, bool write_cache) {
  static const bool enabled = [] {
    const char* env = std::getenv("PAGEDLLM_ROTARY_VEC");
    return env == nullptr || std::atoi(env) != 0;
  }();
  const int e = a.head_size / 32;
  if (!enabled || a.rot_dim != a.head_size || a.head_size % 32 != 0 || (e != 2 && e != 4 && e != 8) ||
      e * sizeof(T) > 16 || e * sizeof(C) > 16) {
    return 0;
  }
  const auto aligned = [](const void* p, size_t bytes) {
    return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
  };
  const size_t word = e * sizeof(T);
  bool ok = aligned(a.query, word) && aligned(a.key, word) && a.query_stride % e == 0 &&
            a.key_stride % e == 0 && aligned(a.q_norm_weight, word) && aligned(a.k_norm_weight, word) &&
            aligned(a.cos_sin_cache, (a.is_neox ? e : e / 2) * sizeof(C));
  if (write_cache) {
    ok = ok && aligned(a.kv_write.value, word) && a.kv_write.value_stride % e == 0 &&
         aligned(a.kv_write.kv_cache, word);
  }
  return ok ? e : 0;
}

template <typename T, typename C, int E, bool kNorm>
void launch_vec(const RotaryEmbeddingArgs& a, int heads, bool write_cache, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(a.num_tokens), (heads + kMaxWarpsPerCta - 1) / kMaxWarpsPerCta);
  if (write_cache) {
    rotary_heads_vec_kernel<T, C, E, kNorm, true><<<grid, kMaxWarpsPerCta * 32, 0, s>>>(a, heads);
  } else {
    rotary_heads_vec_kernel<T, C, E, kNorm, false><<<grid, kMaxWarpsPerCta * 32, 0, s>>>(a, heads);
  }
}

template <typename T, typename C, bool kNorm>
void launch(const RotaryEmbeddingArgs& a, cudaStream_t s) {
  const bool write_cache = a.kv_write.kv_cache != nullptr;
  const int heads = a.num_q_heads + a.num_kv_heads * (write_cache ? 2 : 1);
  switch (vec_elements<T, C>(a, write_cache)) {
    case 2: return launch_vec<T, C, 2, kNorm>(a, heads, write_cache, s);
    case 4: return launch_vec<T, C, 4, kNorm>(a, heads, write_cache, s);
    case 8:  // only 2-byte T and C get here (one 16-byte word); the guard keeps float unbuilt
      if constexpr (sizeof(T) == 2 && sizeof(C) == 2) return launch_vec<T, C, 8, kNorm>(a, heads, write_cache, s);
      break;
    default: break;
  }
  // kNorm stages each warp's head as float: 8 warps per CTA, fewer where 8 staged heads would
  // pass the default 48 KB of shared memory (head_size > 1536); the binding caps head_size at
  // kMaxNormRotaryHeadSize.
  const int head_bytes = a.head_size * static_cast<int>(sizeof(float));
  const int warps = kNorm ? std::max(1, std::min(kMaxWarpsPerCta, (48 << 10) / head_bytes)) : kMaxWarpsPerCta;
  const dim3 grid(static_cast<unsigned>(a.num_tokens), (heads + warps - 1) / warps);
  const int smem = kNorm ? warps * head_bytes : 0;
  if (write_cache) {
    rotary_heads_kernel<T, C, kNorm, true><<<grid, warps * 32, smem, s>>>(a, heads);
  } else {
    rotary_heads_kernel<T, C, kNorm, false><<<grid, warps * 32, smem, s>>>(a, heads);
  }
}

}  // namespace

void rotary_embedding_cuda(const RotaryEmbeddingArgs& a) {
  if (a.num_tokens == 0) return;
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cudaStream_t s = cuda::as_stream(a.stream);
    const bool norm = a.q_norm_weight != nullptr;
    if (a.cache_dtype == DType::kFloat32) {
      norm ? launch<T, float, true>(a, s) : launch<T, float, false>(a, s);
    } else {
      norm ? launch<T, T, true>(a, s) : launch<T, T, false>(a, s);
    }
  });
  cuda::check_launch("rotary_embedding");
}

}  // namespace pagedllm::kernels
