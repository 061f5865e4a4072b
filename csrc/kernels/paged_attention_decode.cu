// The token kernel of paged attention: one CTA per (query token, KV-head slice, KV split);
// grid (num_tokens, num_kv_heads * slices, num_splits).
//
// GQA packing: the CTA computes up to NG query heads that share one KV head, so each K/V row is
// read from memory once for all of them. K/V tiles stream into shared memory through cp.async,
// kStages deep; lanes are grouped TPT to a token (each lane holds E = D / TPT dims), and each
// tile's logits get softmaxed against the running max (online softmax), then weight the V rows. When the batch alone cannot fill the GPU, the context is
// split across CTAs (flash-decoding); each split writes a normalized partial output plus its
// (max, sum) and merge_splits_kernel combines them with log-sum-exp weights.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "kernels/paged_attention_cuda.cuh"

namespace pagedllm::kernels::attn {
namespace {

using cuda::from_float;
using cuda::to_float;

template <typename T, int D>
constexpr int threads_per_token() {
  int tpt = 1;
  while (tpt < 32 && D % (tpt * 2) == 0 && (D / tpt) * static_cast<int>(sizeof(T)) > 16) tpt *= 2;
  return tpt;
}

// E elements of T at src (aligned to the largest power-of-two word dividing E * sizeof(T)).
template <typename T, int E>
__device__ __forceinline__ void load_row(const T* src, float (&dst)[E]) {
  constexpr int kBytes = E * static_cast<int>(sizeof(T));
  constexpr int kChunk = kBytes % 16 == 0 ? 16 : kBytes % 8 == 0 ? 8 : kBytes % 4 == 0 ? 4 : 2;
  constexpr int kPer = kChunk / static_cast<int>(sizeof(T));
#pragma unroll
  for (int c = 0; c < E / kPer; ++c) {
    float part[kPer];
    cuda::load_vec<T, kPer>(src + c * kPer, part);
#pragma unroll
    for (int i = 0; i < kPer; ++i) dst[c * kPer + i] = part[i];
  }
}

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Tokens per pipeline tile: K + V of a tile take at most 32 KB of shared memory.
template <typename T, int D>
constexpr int tile_tokens() {
  constexpr int row = D * static_cast<int>(sizeof(T));
  constexpr int t = 16384 / row;
  return t > 64 ? 64 : (t < 16 ? 16 : t);
}
// Two stages of up-to-32 KB tiles. Measured on an H100 (benchmarks/kernels/NOTES.md): half-size
// tiles three stages deep (more CTAs per SM) ran 4-11% slower.
constexpr int kStages = 2;

template <typename T, int D, int NG>
constexpr int token_kernel_smem_bytes() {
  constexpr int row = D * static_cast<int>(sizeof(T));
  constexpr int tiles = kStages * 2 * tile_tokens<T, D>() * row;  // K and V, kStages deep
  constexpr int logits = NG * tile_tokens<T, D>() * 4;
  constexpr int red = kTokenKernelWarps * NG * D * 4;
  return tiles + (logits > red ? logits : red);
}

// Pipeline: K/V tiles of TILE tokens stream into shared memory with cp.async, kStages deep,
// so a CTA keeps up to kStages tiles of loads in flight while it computes on the oldest. Per
// tile: logits [NG][TILE] -> online-softmax update (running max / sum per head) -> P . V.
template <typename T, int D, int NG>
__global__ void __launch_bounds__(kTokenKernelWarps * 32)
    token_attention_kernel(const TokenKernelParams p) {
  constexpr int TPT = threads_per_token<T, D>();
  constexpr int E = D / TPT;
  constexpr int NTG = kTokenKernelWarps * 32 / TPT;  // rows processed side by side
  constexpr int TILE = tile_tokens<T, D>();
  constexpr int ROW = D * static_cast<int>(sizeof(T));  // bytes per K (or V) row
  constexpr int CR = ROW / 16;                          // 16-byte chunks per row
  constexpr int STAGE = 2 * TILE * ROW;                 // bytes per stage: K tile then V tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* logits = reinterpret_cast<float*>(smem_raw + kStages * STAGE);  // [NG][TILE]
  float* red = logits;                                                   // [warps][NG][D] at the end
  __shared__ float m_run[NG], l_run[NG], alpha[NG];

  const int t = blockIdx.x;
  if (t >= p.query_start_loc[p.num_seqs]) return;  // padding row: nothing owns it
  const int s = find_sequence(p.query_start_loc, p.num_seqs, t);
  const int q_begin = p.query_start_loc[s];
  const int q_len = p.query_start_loc[s + 1] - q_begin;
  if (p.skip_long && q_len >= kPrefillMmaMinQueryLen) return;
  const int kv_end = p.seq_lens[s] - q_len + (t - q_begin) + 1;  // keys [kv_lo, kv_end)
  const int kv_lo = p.sliding_window > 0 ? max(0, kv_end - p.sliding_window) : 0;
  const int z = blockIdx.z;
  if (kv_end <= 0 || z < kv_lo / p.split_tokens || z > (kv_end - 1) / p.split_tokens) return;
  const int t0 = max(kv_lo, z * p.split_tokens);
  const int t1 = min(kv_end, (z + 1) * p.split_tokens);

  const int kvh = blockIdx.y / p.slices;
  const int g0 = (blockIdx.y % p.slices) * NG;
  const int ng = min(NG, p.group - g0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tg = tid / TPT, li = tid % TPT;

  const int64_t row = static_cast<int64_t>(p.num_kv_heads) * D;  // elements per cache slot
  const T* kcache = static_cast<const T*>(p.kv_cache) + static_cast<int64_t>(kvh) * D;
  const T* vcache = kcache + p.kv_plane;
  const int32_t* btab = p.block_table + static_cast<int64_t>(s) * p.max_blocks;
  const int bmask = (1 << p.block_shift) - 1;
  const int num_tiles = (t1 - t0 + TILE - 1) / TILE;

  // Issue the copies of tile i into stage i % kStages (rows past t1 are zero-filled).
  auto issue_tile = [&](int i) {
    unsigned char* stage = smem_raw + (i % kStages) * STAGE;
    const int base = t0 + i * TILE;
    for (int c = tid; c < 2 * TILE * CR; c += kTokenKernelWarps * 32) {
      const int half = c / (TILE * CR);  // 0: K, 1: V
      const int rem = c - half * TILE * CR;
      const int j = rem / CR, w = rem - j * CR;
      const int tok = base + j;
      const T* src = half ? vcache : kcache;
      int bytes = 0;
      if (tok < t1) {
        const int64_t slot =
            (static_cast<int64_t>(btab[tok >> p.block_shift]) << p.block_shift) | (tok & bmask);
        src += slot * row;
        bytes = 16;
      }
      cp_async16(stage + half * TILE * ROW + j * ROW + w * 16,
                 reinterpret_cast<const unsigned char*>(src) + w * 16, bytes);
    }
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < num_tiles) issue_tile(i);
    cp_async_commit();
  }

  float q[NG][E];  // pre-scaled query rows of this CTA's heads
  const T* qrow = static_cast<const T*>(p.query) + static_cast<int64_t>(t) * p.q_stride +
                  static_cast<int64_t>(kvh * p.group + g0) * D + li * E;
#pragma unroll
  for (int g = 0; g < NG; ++g) {
    if (g < ng) {
      load_row<T, E>(qrow + g * D, q[g]);
#pragma unroll
      for (int e = 0; e < E; ++e) q[g][e] *= p.scale;
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) q[g][e] = 0.0f;
    }
  }
  if (tid < NG) { m_run[tid] = -INFINITY; l_run[tid] = 0.0f; alpha[tid] = 0.0f; }
  float acc[NG][E];
#pragma unroll
  for (int g = 0; g < NG; ++g)
#pragma unroll
    for (int e = 0; e < E; ++e) acc[g][e] = 0.0f;

  for (int i = 0; i < num_tiles; ++i) {
    // Keep kStages - 1 tiles in flight beyond the one computed now.
    if (i + kStages - 1 < num_tiles) issue_tile(i + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();
    const unsigned char* stage = smem_raw + (i % kStages) * STAGE;
    const T* sk = reinterpret_cast<const T*>(stage);              // [TILE][D]
    const T* sv = reinterpret_cast<const T*>(stage + TILE * ROW);  // [TILE][D]
    const int n = min(TILE, t1 - (t0 + i * TILE));
    // Logits of the tile, [ng][n].
#pragma unroll
    for (int j0 = 0; j0 < TILE; j0 += NTG) {
      const int j = j0 + tg;
      float kf[E];
      load_row<T, E>(sk + j * D + li * E, kf);
      float part[NG];
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        part[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) part[g] += q[g][e] * kf[e];
      }
#pragma unroll
      for (int o = TPT / 2; o > 0; o >>= 1)
#pragma unroll
        for (int g = 0; g < NG; ++g) part[g] += __shfl_xor_sync(0xffffffffu, part[g], o);
      if (li == 0 && j < n) {
#pragma unroll
        for (int g = 0; g < NG; ++g)
          if (g < ng) logits[g * TILE + j] = part[g];
      }
    }
    __syncthreads();
    // Per head: new running max, exp in place, running sum.
    for (int g = warp; g < ng; g += kTokenKernelWarps) {
      float* lg = logits + g * TILE;
      float m = -INFINITY;
      for (int j = lane; j < n; j += 32) m = fmaxf(m, lg[j]);
      m = cuda::warp_max(m);
      const float m_new = fmaxf(m_run[g], m);
      float sum = 0.0f;
      for (int j = lane; j < TILE; j += 32) {
        const float e = j < n ? __expf(lg[j] - m_new) : 0.0f;  // zero weight past the end
        lg[j] = e;
        sum += e;
      }
      sum = cuda::warp_sum(sum);
      if (lane == 0) {
        const float a = __expf(m_run[g] - m_new);  // 0 on the first tile (m_run = -inf)
        alpha[g] = a;
        l_run[g] = l_run[g] * a + sum;
        m_run[g] = m_new;
      }
    }
    __syncthreads();
    // Rescale the accumulator to the new max, then add P . V of the tile.
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      const float a = g < ng ? alpha[g] : 0.0f;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[g][e] *= a;
    }
#pragma unroll
    for (int j0 = 0; j0 < TILE; j0 += NTG) {
      const int j = j0 + tg;
      float vf[E];
      load_row<T, E>(sv + j * D + li * E, vf);
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const float pj = g < ng ? logits[g * TILE + j] : 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[g][e] += pj * vf[e];
      }
    }
    __syncthreads();  // the stage and the logits are rewritten next
  }
  cp_async_wait<0>();

  // Sum the accumulators of the token groups: within the warp by shuffles, across warps in smem.
#pragma unroll
  for (int o = TPT; o < 32; o <<= 1)
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int e = 0; e < E; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
  if (lane < TPT) {
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int e = 0; e < E; ++e) red[(warp * NG + g) * D + li * E + e] = acc[g][e];
  }
  __syncthreads();
  for (int i = tid; i < ng * D; i += blockDim.x) {
    const int g = i / D, d = i - g * D;
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kTokenKernelWarps; ++w) v += red[(w * NG + g) * D + d];
    const int hq = kvh * p.group + g0 + g;
    const float l = l_run[g];
    const float o = l > 0.0f ? v / l : 0.0f;
    if (p.num_splits == 1) {
      static_cast<T*>(p.out)[(static_cast<int64_t>(t) * p.num_q_heads + hq) * D + d] = from_float<T>(o);
    } else {
      const int64_t idx = (static_cast<int64_t>(t) * p.num_q_heads + hq) * p.num_splits + z;
      p.ws_out[idx * D + d] = o;
      if (d == 0) {
        p.ws_ml[idx * 2] = m_run[g];
        p.ws_ml[idx * 2 + 1] = l;
      }
    }
  }
}

// Combines the splits of one (token, query head): out = sum_z w_z o_z / sum_z w_z with
// w_z = l_z * exp(m_z - max_z m_z). Skips exactly the splits the token kernel skipped.
template <typename T>
__global__ void merge_splits_kernel(const TokenKernelParams p, int head_dim) {
  const int t = blockIdx.x, hq = blockIdx.y;
  if (t >= p.query_start_loc[p.num_seqs]) return;
  const int s = find_sequence(p.query_start_loc, p.num_seqs, t);
  const int q_begin = p.query_start_loc[s];
  const int q_len = p.query_start_loc[s + 1] - q_begin;
  if (p.skip_long && q_len >= kPrefillMmaMinQueryLen) return;
  const int kv_end = p.seq_lens[s] - q_len + (t - q_begin) + 1;
  if (kv_end <= 0) return;
  const int kv_lo = p.sliding_window > 0 ? max(0, kv_end - p.sliding_window) : 0;
  const int z0 = kv_lo / p.split_tokens, z1 = (kv_end - 1) / p.split_tokens;
  const int64_t base = (static_cast<int64_t>(t) * p.num_q_heads + hq) * p.num_splits;
  float m = -INFINITY;
  for (int z = z0; z <= z1; ++z) m = fmaxf(m, p.ws_ml[(base + z) * 2]);
  float total = 0.0f;
  for (int z = z0; z <= z1; ++z) total += p.ws_ml[(base + z) * 2 + 1] * __expf(p.ws_ml[(base + z) * 2] - m);
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.0f;
    for (int z = z0; z <= z1; ++z) {
      const float w = p.ws_ml[(base + z) * 2 + 1] * __expf(p.ws_ml[(base + z) * 2] - m);
      v += w * p.ws_out[(base + z) * head_dim + d];
    }
    static_cast<T*>(p.out)[(static_cast<int64_t>(t) * p.num_q_heads + hq) * head_dim + d] =
        from_float<T>(v * inv);
  }
}

// Query heads per CTA: the group rounded up to a power of two, at most 8 (larger groups take
// several CTAs, "slices", per KV head).
int slice_width(int group) {
  int ng = 1;
  while (ng < group && ng < 8) ng *= 2;
  return ng;
}

struct SplitPlan {
  int num_splits;
  int split_tokens;
};

SplitPlan plan_splits(const PagedAttentionArgs& a) {
  const int ng = slice_width(a.num_q_heads / a.num_kv_heads);
  const int group = a.num_q_heads / a.num_kv_heads;
  const int slices = (group + ng - 1) / ng;
  const int parts = std::max(1, (a.max_seq_len + kPartition - 1) / kPartition);
  const int64_t ctas = std::max<int64_t>(1, a.num_tokens) * a.num_kv_heads * slices;
  const int64_t target = static_cast<int64_t>(sm_count()) * 8;
  int want = static_cast<int>(std::min<int64_t>(parts, (target + ctas - 1) / ctas));
  want = std::max(1, want);
  if (want == 1) return {1, 1 << 30};
  const int per_split = (parts + want - 1) / want;
  return {(parts + per_split - 1) / per_split, per_split * kPartition};
}

int log2_exact(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

template <typename T, int D, int NG>
void launch_typed(const TokenKernelParams& p, int num_tokens, cudaStream_t stream) {
  constexpr int smem = token_kernel_smem_bytes<T, D, NG>();
  static bool configured = false;  // opt in to > 48 KB of dynamic shared memory once
  if (!configured) {
    cudaFuncSetAttribute(token_attention_kernel<T, D, NG>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    configured = true;
  }
  const dim3 grid(num_tokens, p.num_kv_heads * p.slices, p.num_splits);
  token_attention_kernel<T, D, NG><<<grid, kTokenKernelWarps * 32, smem, stream>>>(p);
  cuda::check_launch("paged_attention (token kernel)");
  if (p.num_splits > 1) {
    const dim3 mgrid(num_tokens, p.num_q_heads);
    merge_splits_kernel<T><<<mgrid, std::min(D, 128), 0, stream>>>(p, D);
    cuda::check_launch("paged_attention (merge splits)");
  }
}

template <typename T, int D>
void launch_for_dim(const TokenKernelParams& p, int ng, int num_tokens, cudaStream_t s) {
  switch (ng) {
    case 1: launch_typed<T, D, 1>(p, num_tokens, s); break;
    case 2: launch_typed<T, D, 2>(p, num_tokens, s); break;
    case 4: launch_typed<T, D, 4>(p, num_tokens, s); break;
    default: launch_typed<T, D, 8>(p, num_tokens, s); break;
  }
}

}  // namespace

int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (cached[dev] == 0) {
    int n = 0;
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    cached[dev] = n > 0 ? n : 1;
  }
  return cached[dev];
}

int64_t token_attention_workspace_bytes(const PagedAttentionArgs& a) {
  const SplitPlan plan = plan_splits(a);
  if (plan.num_splits == 1) return 0;
  const int64_t rows = a.num_tokens * a.num_q_heads * plan.num_splits;
  return rows * (a.head_dim + 2) * static_cast<int64_t>(sizeof(float)) + 16;
}

void launch_token_attention(const PagedAttentionArgs& a, bool skip_long) {
  if (a.num_tokens == 0 || a.num_seqs == 0) return;
  const SplitPlan plan = plan_splits(a);
  TokenKernelParams p{};
  p.out = a.out;
  p.query = a.query;
  p.kv_cache = a.kv_cache;
  p.block_table = a.block_table;
  p.query_start_loc = a.query_start_loc;
  p.seq_lens = a.seq_lens;
  const int64_t rows = a.num_tokens * a.num_q_heads * plan.num_splits;
  p.ws_out = static_cast<float*>(a.workspace);
  p.ws_ml = plan.num_splits > 1 ? p.ws_out + rows * a.head_dim : nullptr;
  if (plan.num_splits > 1 && a.workspace == nullptr) {
    throw std::invalid_argument("paged_attention: workspace required (paged_attention_workspace_bytes)");
  }
  p.q_stride = a.q_stride;
  p.kv_plane = a.num_blocks * a.block_size * static_cast<int64_t>(a.num_kv_heads) * a.head_dim;
  p.num_tokens = static_cast<int>(a.num_tokens);
  p.num_seqs = a.num_seqs;
  p.max_blocks = a.max_blocks_per_seq;
  p.num_q_heads = a.num_q_heads;
  p.num_kv_heads = a.num_kv_heads;
  p.group = a.num_q_heads / a.num_kv_heads;
  const int ng = slice_width(p.group);
  p.slices = (p.group + ng - 1) / ng;
  p.block_shift = log2_exact(a.block_size);
  p.scale = a.scale;
  p.sliding_window = a.sliding_window;
  p.split_tokens = plan.split_tokens;
  p.num_splits = plan.num_splits;
  p.skip_long = skip_long;
  cudaStream_t s = cuda::as_stream(a.stream);
  const int nt = static_cast<int>(a.num_tokens);
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    switch (a.head_dim) {
      case 64: launch_for_dim<T, 64>(p, ng, nt, s); break;
      case 80: launch_for_dim<T, 80>(p, ng, nt, s); break;
      case 96: launch_for_dim<T, 96>(p, ng, nt, s); break;
      case 128: launch_for_dim<T, 128>(p, ng, nt, s); break;
      case 256: launch_for_dim<T, 256>(p, ng, nt, s); break;
      default: throw std::invalid_argument("paged_attention: unsupported head_dim on CUDA");
    }
  });
}

}  // namespace pagedllm::kernels::attn
