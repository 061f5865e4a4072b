// The token kernel of paged attention: one CTA per (query token, KV-head slice, KV split), a
// flat grid of num_tokens * num_kv_heads * slices * num_splits CTAs ordered by token_order.
//
// GQA packing: the CTA computes up to NG query heads that share one KV head, so each K/V row is
// read from memory once for all of them. K/V tiles stream into shared memory through cp.async,
// kStages deep; lanes are grouped TPT to a token (each lane holds E = D / TPT dims), and each
// token group keeps its own online softmax over the rows it reads, and the groups merge with
// log-sum-exp weights at the end (no block-wide softmax step per tile). When the batch alone
// cannot fill the GPU, the context is
// split across CTAs (flash-decoding); each split writes a normalized partial output plus its
// (max, sum) and merge_splits_kernel combines them with log-sum-exp weights.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
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

template <bool kL2Prefetch = false>
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  if constexpr (kL2Prefetch) {  // also pull the surrounding 256 bytes into L2
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Tokens per pipeline tile: K + V of a tile take at most kCapBytes of shared memory; a power of
// two in [16, 64] (so a multiple of every token-group count and softmax chunk).
template <typename T, int D, int kCapBytes = 32768>
constexpr int tile_tokens() {
  constexpr int row = D * static_cast<int>(sizeof(T));
  int t = 64;
  while (t > 16 && 2 * t * row > kCapBytes) t /= 2;
  return t;
}
// Default pipeline: three stages of up-to-16 KB tiles (32 tokens at bf16 D=128). Measured on an
// H100 (benchmarks/kernels/NOTES.md, v4): 5-17% faster than two stages of 32 KB tiles, which
// beat four stages of 16 KB and three of 32 KB. Other shapes can be selected for tuning with
// PAGEDLLM_DECODE_VARIANT (bf16, head_dim 128, group widths 2 and 4 only; see decode_variant()).
constexpr int kStages = 3;
constexpr int kTileCapBytes = 16384;

template <typename T, int D, int NG, int STAGES, int TILE>
constexpr int token_kernel_smem_bytes() {
  constexpr int tiles = STAGES * 2 * TILE * D * static_cast<int>(sizeof(T));  // K and V tiles
  constexpr int red = kTokenKernelWarps * NG * (D + 2) * 4;  // final merge, after the pipeline
  return tiles > red ? tiles : red;
}

// Pipeline: K/V tiles of TILE tokens stream into shared memory with cp.async, STAGES deep, so
// STAGES - 1 tiles are in flight while the CTA computes on the oldest. One barrier per tile.
//
// Softmax without block-wide steps: each token group (TPT lanes) owns rows tg, tg + NTG, ... of
// every tile and keeps its own running (max m, sum l, accumulator acc) per head. Every lane of a
// group holds the same m and l (the dot products are reduced across the group by xor shuffles)
// and its own E dims of acc. At the end, groups merge with log-sum-exp weights: within a warp by
// shuffles, across warps in shared memory. Invariant: acc[g] / l[g] is the softmax-weighted sum
// of V over the rows the group has seen, relative to the max m[g].
template <typename T, int D, int NG, int STAGES, int TILE, bool L2PF = false>
__global__ void __launch_bounds__(kTokenKernelWarps * 32)
    token_attention_kernel(const TokenKernelParams p) {
  constexpr int TPT = threads_per_token<T, D>();
  constexpr int E = D / TPT;
  constexpr int NTG = kTokenKernelWarps * 32 / TPT;  // token groups side by side
  constexpr int R = TILE / NTG;                      // rows of a tile per token group
  // Rows per online-softmax update: more rows share one rescale, bounded by registers.
  constexpr int RC = R < (16 / NG > 0 ? 16 / NG : 1) ? R : (16 / NG > 0 ? 16 / NG : 1);
  static_assert(TILE % NTG == 0 && R % RC == 0, "tile shape");
  constexpr int ROW = D * static_cast<int>(sizeof(T));  // bytes per K (or V) row
  constexpr int CR = ROW / 16;                          // 16-byte chunks per row
  constexpr int STAGE = 2 * TILE * ROW;                 // bytes per stage: K tile then V tile
  extern __shared__ __align__(16) unsigned char smem_raw[];

  // Flat grid: KV-head slice fastest, then split, then token rank. CTAs start in index order, so
  // with token_order = longest context first the short tokens make up the last wave.
  const int head_slices = p.num_kv_heads * p.slices;
  const int hs = static_cast<int>(blockIdx.x % head_slices);
  const int rest = static_cast<int>(blockIdx.x / head_slices);
  const int z = rest % p.num_splits;
  const int rank = rest / p.num_splits;
  const int t = p.token_order != nullptr ? p.token_order[rank] : rank;
  if (t < 0 || t >= p.query_start_loc[p.num_seqs]) return;  // padding row: nothing owns it
  const int s = find_sequence(p.query_start_loc, p.num_seqs, t);
  const int q_begin = p.query_start_loc[s];
  const int q_len = p.query_start_loc[s + 1] - q_begin;
  if (p.skip_long && q_len >= kPrefillMmaMinQueryLen) return;
  const int kv_end = p.seq_lens[s] - q_len + (t - q_begin) + 1;  // keys [kv_lo, kv_end)
  const int kv_lo = p.sliding_window > 0 ? max(0, kv_end - p.sliding_window) : 0;
  if (kv_end <= 0) return;
  const int split = split_size(kv_end, p.num_splits);
  if (z < kv_lo / split || z > (kv_end - 1) / split) return;
  const int t0 = max(kv_lo, z * split);
  const int t1 = min(kv_end, (z + 1) * split);

  const int kvh = hs / p.slices;
  const int g0 = (hs % p.slices) * NG;
  const int ng = min(NG, p.group - g0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tg = tid / TPT, li = tid % TPT;

  const int64_t row = static_cast<int64_t>(p.num_kv_heads) * D;  // elements per cache slot
  const T* kcache = static_cast<const T*>(p.kv_cache) + static_cast<int64_t>(kvh) * D;
  const T* vcache = kcache + p.kv_plane;
  const int32_t* btab = p.block_table + static_cast<int64_t>(s) * p.max_blocks;
  const int bmask = (1 << p.block_shift) - 1;
  const int num_tiles = (t1 - t0 + TILE - 1) / TILE;

  // Issue the copies of tile i into stage i % STAGES (rows past t1 are zero-filled).
  auto issue_tile = [&](int i) {
    unsigned char* stage = smem_raw + (i % STAGES) * STAGE;
    const int base = t0 + i * TILE;
#pragma unroll 4
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
      cp_async16<L2PF>(stage + half * TILE * ROW + j * ROW + w * 16,
                 reinterpret_cast<const unsigned char*>(src) + w * 16, bytes);
    }
  };
#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < num_tiles) issue_tile(i);
    cp_async_commit();
  }

  float q[NG][E];  // pre-scaled query rows of this CTA's heads (zero for padding heads)
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
  float m[NG], l[NG], acc[NG][E];
#pragma unroll
  for (int g = 0; g < NG; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[g][e] = 0.0f;
  }

  for (int i = 0; i < num_tiles; ++i) {
    cp_async_wait<STAGES - 2>();  // this thread's copies of tile i have landed
    __syncthreads();              // everyone's have; and every warp is done with tile i - 1
    if (i + STAGES - 1 < num_tiles) issue_tile(i + STAGES - 1);  // into tile i - 1's stage
    cp_async_commit();
    const unsigned char* stage = smem_raw + (i % STAGES) * STAGE;
    const T* sk = reinterpret_cast<const T*>(stage);              // [TILE][D]
    const T* sv = reinterpret_cast<const T*>(stage + TILE * ROW);  // [TILE][D]
    const int n = min(TILE, t1 - (t0 + i * TILE));                // valid rows of the tile
#pragma unroll
    for (int r0 = 0; r0 < R; r0 += RC) {
      float sc[RC][NG];  // logits of this group's next RC rows, then their weights
#pragma unroll
      for (int r = 0; r < RC; ++r) {
        const int j = (r0 + r) * NTG + tg;
        float kf[E];
        load_row<T, E>(sk + j * D + li * E, kf);
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          float part = 0.0f;
#pragma unroll
          for (int e = 0; e < E; ++e) part += q[g][e] * kf[e];
          sc[r][g] = part;
        }
#pragma unroll
        for (int o = TPT / 2; o > 0; o >>= 1)
#pragma unroll
          for (int g = 0; g < NG; ++g) sc[r][g] += __shfl_xor_sync(0xffffffffu, sc[r][g], o);
        if (j >= n) {
#pragma unroll
          for (int g = 0; g < NG; ++g) sc[r][g] = -INFINITY;  // past the end: zero weight
        }
      }
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        float mt = sc[0][g];
#pragma unroll
        for (int r = 1; r < RC; ++r) mt = fmaxf(mt, sc[r][g]);
        const float m_new = fmaxf(m[g], mt);
        const float mu = m_new == -INFINITY ? 0.0f : m_new;  // nothing seen yet: keep zeros
        const float a = __expf(m[g] - mu);
        float sum = 0.0f;
#pragma unroll
        for (int r = 0; r < RC; ++r) {
          sc[r][g] = __expf(sc[r][g] - mu);
          sum += sc[r][g];
        }
        l[g] = l[g] * a + sum;
        m[g] = m_new;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[g][e] *= a;
      }
#pragma unroll
      for (int r = 0; r < RC; ++r) {
        const int j = (r0 + r) * NTG + tg;
        float vf[E];  // zero-filled past the end, so 0 * 0 there
        load_row<T, E>(sv + j * D + li * E, vf);
#pragma unroll
        for (int g = 0; g < NG; ++g)
#pragma unroll
          for (int e = 0; e < E; ++e) acc[g][e] += sc[r][g] * vf[e];
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages are reused for the merge below

  // Merge the token groups of a warp (same lane index li, other group) by shuffles.
#pragma unroll
  for (int o = TPT; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float mn = fmaxf(m[g], mo);
      const float mu = mn == -INFINITY ? 0.0f : mn;
      const float a = __expf(m[g] - mu), b = __expf(mo - mu);
      l[g] = l[g] * a + lo * b;
      m[g] = mn;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[g][e] = acc[g][e] * a + __shfl_xor_sync(0xffffffffu, acc[g][e], o) * b;
    }
  }
  // Then across warps in shared memory: [warps][NG][D] accumulators, [warps][NG][2] (m, l).
  float* red_acc = reinterpret_cast<float*>(smem_raw);
  float* red_ml = red_acc + kTokenKernelWarps * NG * D;
  if (lane < TPT) {
#pragma unroll
    for (int g = 0; g < NG; ++g) {
#pragma unroll
      for (int e = 0; e < E; ++e) red_acc[(warp * NG + g) * D + li * E + e] = acc[g][e];
      if (li == 0) {
        red_ml[(warp * NG + g) * 2] = m[g];
        red_ml[(warp * NG + g) * 2 + 1] = l[g];
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < ng * D; i += blockDim.x) {
    const int g = i / D, d = i - g * D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kTokenKernelWarps; ++w) mx = fmaxf(mx, red_ml[(w * NG + g) * 2]);
    const float mu = mx == -INFINITY ? 0.0f : mx;
    float v = 0.0f, lsum = 0.0f;
#pragma unroll
    for (int w = 0; w < kTokenKernelWarps; ++w) {
      const float wt = __expf(red_ml[(w * NG + g) * 2] - mu);
      v += red_acc[(w * NG + g) * D + d] * wt;
      lsum += red_ml[(w * NG + g) * 2 + 1] * wt;
    }
    const int hq = kvh * p.group + g0 + g;
    const float o = lsum > 0.0f ? v / lsum : 0.0f;
    if (p.num_splits == 1) {
      static_cast<T*>(p.out)[(static_cast<int64_t>(t) * p.num_q_heads + hq) * D + d] = from_float<T>(o);
    } else {
      const int64_t idx = (static_cast<int64_t>(t) * p.num_q_heads + hq) * p.num_splits + z;
      p.ws_out[idx * D + d] = o;
      if (d == 0) {
        p.ws_ml[idx * 2] = mx;
        p.ws_ml[idx * 2 + 1] = lsum;
      }
    }
  }
}

// Combines the splits of one (token, query head): out = sum_z w_z o_z / sum_z w_z with
// w_z = l_z * exp(m_z - max_z m_z). Skips exactly the splits the token kernel skipped.
// The block first turns every split's (m, l) into its weight in shared memory (one split per
// thread, block-wide max and sum), then each thread sums one output dim over the splits: no
// serial walk over the splits per thread (v3 did three, which dominated at 128 splits).
// Dynamic shared memory: num_splits floats.
template <typename T>
__global__ void merge_splits_kernel(const TokenKernelParams p, int head_dim) {
  extern __shared__ float weights[];  // [num_splits], only [z0, z1] used
  __shared__ float scratch[32];
  const int t = blockIdx.x, hq = blockIdx.y;
  if (t >= p.query_start_loc[p.num_seqs]) return;
  const int s = find_sequence(p.query_start_loc, p.num_seqs, t);
  const int q_begin = p.query_start_loc[s];
  const int q_len = p.query_start_loc[s + 1] - q_begin;
  if (p.skip_long && q_len >= kPrefillMmaMinQueryLen) return;
  const int kv_end = p.seq_lens[s] - q_len + (t - q_begin) + 1;
  if (kv_end <= 0) return;
  const int kv_lo = p.sliding_window > 0 ? max(0, kv_end - p.sliding_window) : 0;
  const int split = split_size(kv_end, p.num_splits);
  const int z0 = kv_lo / split, z1 = (kv_end - 1) / split;
  const int64_t base = (static_cast<int64_t>(t) * p.num_q_heads + hq) * p.num_splits;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

  float m = -INFINITY;
  for (int z = z0 + threadIdx.x; z <= z1; z += blockDim.x) m = fmaxf(m, p.ws_ml[(base + z) * 2]);
  m = cuda::warp_max(m);
  if (lane == 0) scratch[warp] = m;
  __syncthreads();
  m = lane < nwarps ? scratch[lane] : -INFINITY;
  m = cuda::warp_max(m);  // every thread: the max over all splits
  __syncthreads();        // scratch is reused for the sum
  float part = 0.0f;
  for (int z = z0 + threadIdx.x; z <= z1; z += blockDim.x) {
    const float w = p.ws_ml[(base + z) * 2 + 1] * __expf(p.ws_ml[(base + z) * 2] - m);
    weights[z] = w;
    part += w;
  }
  const float total = cuda::block_sum(part, scratch);  // its barriers also publish weights[]
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float v = 0.0f;
#pragma unroll 4
    for (int z = z0; z <= z1; ++z) v += weights[z] * p.ws_out[(base + z) * head_dim + d];
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

// CTAs per KV head: the group in slices of slice_width(group) query heads.
int slices_per_kv_head(int group) {
  const int ng = slice_width(group);
  return (group + ng - 1) / ng;
}

// At most this many token-kernel CTAs are resident per SM (128 threads, >= 48 KB of stages):
// the workspace is sized with it, so it bounds every plan.
constexpr int kMaxResidentPerSm = 8;

// Splits per (token, head slice): 1 once the batch alone fills one wave of the CTAs that fit at
// once (resident_per_sm per SM); else as many as fill that wave, at most one per
// kSplitGranularity tokens of the max_seq_len hint. Each query then cuts its own context into that
// many parts (split_size). (The first plan aimed at 8 CTAs per SM, rounded
// up, i.e. several waves and more merging: on the H100 the one-wave plan was faster or equal in 9
// of 10 cases, e.g. B=1 L=16384 51.1 -> 41.4 us, B=64 L=512 76.8 -> 63.4 us; 2% slower at B=64
// L=16384.) Depends only on the launch's shape hints, so a captured CUDA graph keeps a valid
// plan; never more splits than the plan for kMaxResidentPerSm.
int plan_splits(const PagedAttentionArgs& a, int resident_per_sm) {
  const int slices = slices_per_kv_head(a.num_q_heads / a.num_kv_heads);
  const int parts = std::max(1, (a.max_seq_len + kSplitGranularity - 1) / kSplitGranularity);
  const int64_t ctas = std::max<int64_t>(1, a.num_tokens) * a.num_kv_heads * slices;
  const int64_t slots = static_cast<int64_t>(sm_count()) * std::min(resident_per_sm, kMaxResidentPerSm);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(parts, slots / ctas)));
}

int log2_exact(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

// Pipeline shape for tuning runs: PAGEDLLM_DECODE_VARIANT = 0 (default: 3 stages x 32-token
// tiles for bf16 D=128), 1 (2 x 64), 2 (4 x 32), 3 (4 x 16), 4 (default + L2::256B prefetch
// hint on the copies). Read once.
int decode_variant() {
  static const int v = [] {
    const char* env = std::getenv("PAGEDLLM_DECODE_VARIANT");
    return env ? std::atoi(env) : 0;
  }();
  return v;
}

// Plans the splits for this kernel's residency, launches it, then the merge when split.
template <typename T, int D, int NG, int STAGES, int TILE, bool L2PF = false>
void launch_shape(TokenKernelParams p, const PagedAttentionArgs& a, cudaStream_t stream) {
  constexpr int smem = token_kernel_smem_bytes<T, D, NG, STAGES, TILE>();
  constexpr int threads = kTokenKernelWarps * 32;
  auto* kernel = token_attention_kernel<T, D, NG, STAGES, TILE, L2PF>;
  static int resident_per_sm = 0;  // per instance: opt in to > 48 KB of smem, ask occupancy once
  if (resident_per_sm == 0) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    int n = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem);
    resident_per_sm = std::max(1, n);
  }
  p.num_splits = plan_splits(a, resident_per_sm);
  if (p.num_splits > 1) {
    if (a.workspace == nullptr) {
      throw std::invalid_argument("paged_attention: workspace required (paged_attention_workspace_bytes)");
    }
    const int64_t rows = a.num_tokens * a.num_q_heads * p.num_splits;
    p.ws_out = static_cast<float*>(a.workspace);  // [rows, D] then [rows, 2]
    p.ws_ml = p.ws_out + rows * D;
  }
  const int num_tokens = static_cast<int>(a.num_tokens);
  const int64_t ctas = static_cast<int64_t>(num_tokens) * p.num_kv_heads * p.slices * p.num_splits;
  if (ctas > INT32_MAX) throw std::invalid_argument("paged_attention: batch too large for one launch");
  kernel<<<static_cast<unsigned>(ctas), threads, smem, stream>>>(p);
  cuda::check_launch("paged_attention (token kernel)");
  if (p.num_splits > 1) {
    const dim3 mgrid(num_tokens, p.num_q_heads);
    const size_t merge_smem = static_cast<size_t>(p.num_splits) * sizeof(float);
    merge_splits_kernel<T><<<mgrid, 128, merge_smem, stream>>>(p, D);  // whole warps
    cuda::check_launch("paged_attention (merge splits)");
  }
}

template <typename T, int D, int NG>
void launch_typed(const TokenKernelParams& p, const PagedAttentionArgs& a, cudaStream_t stream) {
  constexpr bool tunable = std::is_same_v<T, __nv_bfloat16> && D == 128 && (NG == 2 || NG == 4);
  const int variant = tunable ? decode_variant() : 0;
  if constexpr (tunable) {
    if (variant == 1) launch_shape<T, D, NG, 2, 64>(p, a, stream);
    if (variant == 2) launch_shape<T, D, NG, 4, 32>(p, a, stream);
    if (variant == 3) launch_shape<T, D, NG, 4, 16>(p, a, stream);
    if (variant == 4) launch_shape<T, D, NG, kStages, 32, true>(p, a, stream);
  }
  if (variant < 1 || variant > 4) {
    launch_shape<T, D, NG, kStages, tile_tokens<T, D, kTileCapBytes>()>(p, a, stream);
  }
}

template <typename T, int D>
void launch_for_dim(const TokenKernelParams& p, int ng, const PagedAttentionArgs& a, cudaStream_t s) {
  switch (ng) {
    case 1: launch_typed<T, D, 1>(p, a, s); break;
    case 2: launch_typed<T, D, 2>(p, a, s); break;
    case 4: launch_typed<T, D, 4>(p, a, s); break;
    default: launch_typed<T, D, 8>(p, a, s); break;
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
  const int num_splits = plan_splits(a, kMaxResidentPerSm);  // the largest plan any kernel makes
  if (num_splits == 1) return 0;
  const int64_t rows = a.num_tokens * a.num_q_heads * num_splits;
  return rows * (a.head_dim + 2) * static_cast<int64_t>(sizeof(float)) + 16;
}

void launch_token_attention(const PagedAttentionArgs& a, bool skip_long) {
  if (a.num_tokens == 0 || a.num_seqs == 0) return;
  TokenKernelParams p{};  // the split plan and workspace pointers are set by launch_shape
  p.out = a.out;
  p.query = a.query;
  p.kv_cache = a.kv_cache;
  p.block_table = a.block_table;
  p.query_start_loc = a.query_start_loc;
  p.seq_lens = a.seq_lens;
  p.token_order = a.token_order;
  p.q_stride = a.q_stride;
  p.kv_plane = a.num_blocks * a.block_size * static_cast<int64_t>(a.num_kv_heads) * a.head_dim;
  p.num_tokens = static_cast<int>(a.num_tokens);
  p.num_seqs = a.num_seqs;
  p.max_blocks = a.max_blocks_per_seq;
  p.num_q_heads = a.num_q_heads;
  p.num_kv_heads = a.num_kv_heads;
  p.group = a.num_q_heads / a.num_kv_heads;
  const int ng = slice_width(p.group);
  p.slices = slices_per_kv_head(p.group);
  p.block_shift = log2_exact(a.block_size);
  p.scale = a.scale;
  p.sliding_window = a.sliding_window;
  p.skip_long = skip_long;
  cudaStream_t s = cuda::as_stream(a.stream);
  cuda::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    switch (a.head_dim) {
      case 64: launch_for_dim<T, 64>(p, ng, a, s); break;
      case 80: launch_for_dim<T, 80>(p, ng, a, s); break;
      case 96: launch_for_dim<T, 96>(p, ng, a, s); break;
      case 128: launch_for_dim<T, 128>(p, ng, a, s); break;
      case 256: launch_for_dim<T, 256>(p, ng, a, s); break;
      default: throw std::invalid_argument("paged_attention: unsupported head_dim on CUDA");
    }
  });
}

}  // namespace pagedllm::kernels::attn
