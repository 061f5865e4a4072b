// Decode attention: one CTA per (query token, KV-head slice, KV split), a flat grid of
// num_tokens * num_kv_heads * slices * num_splits CTAs ordered by token_order. Two kernels share
// that grid, the K/V tile pipeline, the final cross-warp merge and the split merge:
//
// - token_attention_kernel (CUDA cores, every dtype and head size): lanes are grouped TPT to a
//   key (each lane holds E = D / TPT dims), and each key group keeps its own online softmax over
//   the rows it reads; the groups merge with log-sum-exp weights at the end.
// - mma_token_attention_kernel (tensor cores, fp16/bf16, head sizes 64-128): the slice's query
//   heads are the rows of mma.m16n8k16 tiles, each warp owns 16 keys of every tile.
//
// GQA packing: the CTA computes up to 8 query heads that share one KV head, so each K/V row is
// read from memory once for all of them. K/V tiles stream into shared memory through cp.async,
// STAGES deep. When the batch alone cannot fill the GPU, each query's context is split across
// CTAs (flash-decoding); each split writes a normalized partial output plus its (max, sum) and
// merge_splits_kernel combines them with log-sum-exp weights.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <type_traits>

#include "kernels/paged_attention_cuda.cuh"
#include "kernels/tensor_core.cuh"

namespace pagedllm::kernels::attn {
namespace {

using cuda::cp_async16;
using cuda::cp_async_commit;
using cuda::cp_async_wait;
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
// beat four stages of 16 KB and three of 32 KB (those shapes were removed after the measurement).
constexpr int kStages = 3;
constexpr int kTileCapBytes = 16384;
// Tensor-core kernel: 4 warps x 16 keys = 64-key tiles, 3 stages (104 KB at D=128: 2 CTAs per SM).
// Measured against 2 warps x 4 stages of 32 keys (slower everywhere, up to 1.5x) and 4 warps x
// 2 stages (3 CTAs per SM: 4% faster on short ragged batches, up to 28% slower on uniform ones).
constexpr int kMmaStages = 3;
constexpr int kMmaWarps = 4;

// Shared memory the cross-warp merge needs: [WARPS][NG][D] accumulators, [WARPS][NG][2] (m, l).
template <int D, int NG, int WARPS>
constexpr int warp_merge_smem_bytes() { return WARPS * NG * (D + 2) * 4; }

template <typename T, int D, int NG, int STAGES, int TILE>
constexpr int token_kernel_smem_bytes() {
  constexpr int tiles = STAGES * 2 * TILE * D * static_cast<int>(sizeof(T));  // K and V tiles
  constexpr int red = warp_merge_smem_bytes<D, NG, kTokenKernelWarps>();  // after the pipeline
  return tiles > red ? tiles : red;
}

// Where one CTA of a decode kernel works. Flat grid: KV-head slice fastest, then split, then
// token rank; CTAs start in index order, so with token_order = longest context first the short
// tokens make up the last wave. valid == false: nothing to do (a padding row, a chunk the
// prefill kernel owns, a split past the context).
struct DecodeWork {
  int t, s, z;      // query token, its sequence, split
  int kvh, g0, ng;  // KV head, the slice's first query head within the group, heads in the slice
  int t0, t1;       // keys [t0, t1) of this split
  bool valid;
};

__device__ __forceinline__ DecodeWork locate_work(const TokenKernelParams& p) {
  DecodeWork w{};
  w.valid = false;
  const int head_slices = p.num_kv_heads * p.slices;
  const int hs = static_cast<int>(blockIdx.x % head_slices);
  const int rest = static_cast<int>(blockIdx.x / head_slices);
  w.z = rest % p.num_splits;
  const int rank = rest / p.num_splits;
  w.t = p.token_order != nullptr ? p.token_order[rank] : rank;
  if (w.t < 0 || w.t >= p.query_start_loc[p.num_seqs]) return w;  // padding row: nothing owns it
  w.s = find_sequence(p.query_start_loc, p.num_seqs, w.t);
  const int q_begin = p.query_start_loc[w.s];
  const int q_len = p.query_start_loc[w.s + 1] - q_begin;
  if (p.skip_long && q_len >= kPrefillMmaMinQueryLen) return w;
  const int kv_end = p.seq_lens[w.s] - q_len + (w.t - q_begin) + 1;  // keys [kv_lo, kv_end)
  const int kv_lo = p.sliding_window > 0 ? max(0, kv_end - p.sliding_window) : 0;
  if (kv_end <= 0) return w;
  const int split = split_size(kv_end, p.num_splits);
  if (w.z < kv_lo / split || w.z > (kv_end - 1) / split) return w;
  w.t0 = max(kv_lo, w.z * split);
  w.t1 = min(kv_end, (w.z + 1) * split);
  w.kvh = hs / p.slices;
  w.g0 = (hs % p.slices) * p.slice_width;
  w.ng = min(p.slice_width, p.group - w.g0);
  w.valid = true;
  return w;
}

// Issues the cp.async copies of the K and V rows of keys [base, base + TILE) of one KV head into
// a stage laid out [K rows][V rows], RS bytes per row (rows past t1 are zero-filled). THREADS
// threads take 16-byte chunks in turn.
//
// Fast path (THREADS a multiple of the chunks per row, TILE a multiple of the rows the threads
// cover at once): each thread keeps one chunk column and walks rows tid / CR, + THREADS / CR, ...,
// so a row's cache slot is computed once for its K and its V chunk, in 32 bits (the launcher
// refuses caches of >= 2^31 slots), and without a branch (rows past t1 read row t1 - 1's address
// with a zero-byte copy). Per chunk the old loop spent a division, a block-table load and 64-bit
// slot math, twice per row: on an H200 the decode kernels ran 1.21x (token kernel, group 2) to
// 1.43x (tensor-core kernel) faster without it (benchmarks/kernels/NOTES.md, v6): both kernels
// are issue-bound there, so integer work per chunk competed with the loads it issues.
template <typename T, int D, int TILE, int RS, int THREADS>
__device__ __forceinline__ void issue_kv_tile(unsigned char* stage, const T* kcache /* head's row 0 */,
                                              const T* vcache, const int32_t* btab /* [max_blocks] */,
                                              int block_shift, int64_t slot_elems, int base, int t1) {
  constexpr int CR = D * static_cast<int>(sizeof(T)) / 16;  // 16-byte chunks per row
  const int bmask = (1 << block_shift) - 1;
  if constexpr (THREADS % CR == 0 && TILE % (THREADS / CR) == 0) {
    constexpr int kRowStep = THREADS / CR;  // rows the CTA covers per pass
    const int col = static_cast<int>(threadIdx.x) % CR, row0 = static_cast<int>(threadIdx.x) / CR;
    const int slot_bytes = static_cast<int>(slot_elems) * static_cast<int>(sizeof(T));
    const unsigned char* ksrc = reinterpret_cast<const unsigned char*>(kcache) + col * 16;
    const int64_t v_delta = reinterpret_cast<const unsigned char*>(vcache) -
                            reinterpret_cast<const unsigned char*>(kcache);
    unsigned char* dst = stage + row0 * RS + col * 16;
#pragma unroll
    for (int r = 0; r < TILE / kRowStep; ++r) {
      const int tok = base + row0 + r * kRowStep;
      const bool live = tok < t1;
      const int tc = live ? tok : t1 - 1;  // t1 > base: a mapped row, never read (0 bytes)
      const int slot = (btab[tc >> block_shift] << block_shift) | (tc & bmask);
      const unsigned char* src = ksrc + static_cast<int64_t>(slot) * slot_bytes;
      const int bytes = live ? 16 : 0;
      cp_async16(dst + r * kRowStep * RS, src, bytes);
      cp_async16(dst + (TILE + r * kRowStep) * RS, src + v_delta, bytes);
    }
  } else {
#pragma unroll 4
    for (int c = threadIdx.x; c < 2 * TILE * CR; c += THREADS) {
      const int half = c / (TILE * CR);  // 0: K, 1: V
      const int rem = c - half * TILE * CR;
      const int j = rem / CR, w = rem - j * CR;
      const int tok = base + j;
      const T* src = half ? vcache : kcache;
      int bytes = 0;
      if (tok < t1) {
        const int64_t slot = (static_cast<int64_t>(btab[tok >> block_shift]) << block_shift) | (tok & bmask);
        src += slot * slot_elems;
        bytes = 16;
      }
      cp_async16(stage + half * TILE * RS + j * RS + w * 16,
                 reinterpret_cast<const unsigned char*>(src) + w * 16, bytes);
    }
  }
}

// Combines the warps' softmax states of one CTA and stores the result: the output rows when
// unsplit, else the split's normalized rows and (max, sum) in the workspace. red_acc holds each
// warp's unnormalized accumulators relative to its max (natural-log units, in red_ml with its
// sum of exponentials). Call after a barrier that publishes red_acc / red_ml.
template <typename T, int D, int NG, int WARPS>
__device__ __forceinline__ void store_warp_merge(const TokenKernelParams& p, const DecodeWork& w,
                                                 const float* red_acc, const float* red_ml) {
  for (int i = threadIdx.x; i < w.ng * D; i += WARPS * 32) {
    const int g = i / D, d = i - g * D;
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < WARPS; ++k) mx = fmaxf(mx, red_ml[(k * NG + g) * 2]);
    const float mu = mx == -INFINITY ? 0.0f : mx;
    float v = 0.0f, lsum = 0.0f;
#pragma unroll
    for (int k = 0; k < WARPS; ++k) {
      const float wt = __expf(red_ml[(k * NG + g) * 2] - mu);
      v += red_acc[(k * NG + g) * D + d] * wt;
      lsum += red_ml[(k * NG + g) * 2 + 1] * wt;
    }
    const int hq = w.kvh * p.group + w.g0 + g;
    const float o = lsum > 0.0f ? v / lsum : 0.0f;
    if (p.num_splits == 1) {
      static_cast<T*>(p.out)[(static_cast<int64_t>(w.t) * p.num_q_heads + hq) * D + d] = from_float<T>(o);
    } else {
      const int64_t idx = (static_cast<int64_t>(w.t) * p.num_q_heads + hq) * p.num_splits + w.z;
      p.ws_out[idx * D + d] = o;
      if (d == 0) {
        p.ws_ml[idx * 2] = mx;
        p.ws_ml[idx * 2 + 1] = lsum;
      }
    }
  }
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
template <typename T, int D, int NG, int STAGES, int TILE>
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
  constexpr int STAGE = 2 * TILE * ROW;                 // bytes per stage: K tile then V tile
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const DecodeWork w = locate_work(p);
  if (!w.valid) return;
  const int t0 = w.t0, t1 = w.t1, ng = w.ng;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tg = tid / TPT, li = tid % TPT;

  const int64_t row = static_cast<int64_t>(p.num_kv_heads) * D;  // elements per cache slot
  const T* kcache = static_cast<const T*>(p.kv_cache) + static_cast<int64_t>(w.kvh) * D;
  const T* vcache = kcache + p.kv_plane;
  const int32_t* btab = p.block_table + static_cast<int64_t>(w.s) * p.max_blocks;
  const int num_tiles = (t1 - t0 + TILE - 1) / TILE;

  // Issue the copies of tile i into stage i % STAGES.
  auto issue_tile = [&](int i) {
    issue_kv_tile<T, D, TILE, ROW, kTokenKernelWarps * 32>(smem_raw + (i % STAGES) * STAGE, kcache, vcache,
                                                         btab, p.block_shift, row, t0 + i * TILE, t1);
  };
#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < num_tiles) issue_tile(i);
    cp_async_commit();
  }

  float q[NG][E];  // pre-scaled query rows of this CTA's heads (zero for padding heads)
  const T* qrow = static_cast<const T*>(p.query) + static_cast<int64_t>(w.t) * p.q_stride +
                  static_cast<int64_t>(w.kvh * p.group + w.g0) * D + li * E;
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
  store_warp_merge<T, D, NG, kTokenKernelWarps>(p, w, red_acc, red_ml);
}

// The tensor-core decode kernel (fp16 / bf16, D in 64..128): the slice's query heads are rows
// 0..ng-1 of an m16n8k16 A tile (rows ng..15 zero), so S = Q K^T for 8 keys is KS mma
// instructions where the token kernel spends ~40 CUDA-core instructions per key and head group;
// most of the tile's rows are padding, which costs nothing the memory-bound kernel can see.
// Each of the WARPS warps owns 16 keys of every 16 * WARPS-key tile and keeps its own online
// softmax in base 2; P V reuses the S fragment as the A operand (flash-attention-2 layout). K/V
// rows sit in padded shared memory (D + 8 elements) so ldmatrix rows hit distinct banks.
// Invariant per warp: o / l is the softmax-weighted sum of V over the keys the warp has seen,
// relative to 2^m; l is this lane's partial sum (the quad's lanes add up at the end).
template <typename T, int D, int STAGES, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) mma_token_attention_kernel(const TokenKernelParams p) {
  constexpr int TILE = 16 * WARPS;  // keys per stage
  constexpr int DP = D + 8;         // padded row, elements
  constexpr int RS = DP * static_cast<int>(sizeof(T));
  constexpr int STAGE = 2 * TILE * RS;
  constexpr int KS = D / 16;  // k-steps of Q K^T
  constexpr int DT = D / 8;   // n-tiles of P V
  static_assert(DT % 2 == 0, "ldmatrix.x4 covers two n-tiles");
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const DecodeWork w = locate_work(p);
  if (!w.valid) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int gid = lane >> 2, tig = lane & 3;  // fragment row (query head) and column pair

  const int64_t row = static_cast<int64_t>(p.num_kv_heads) * D;
  const T* kcache = static_cast<const T*>(p.kv_cache) + static_cast<int64_t>(w.kvh) * D;
  const T* vcache = kcache + p.kv_plane;
  const int32_t* btab = p.block_table + static_cast<int64_t>(w.s) * p.max_blocks;
  const int num_tiles = (w.t1 - w.t0 + TILE - 1) / TILE;
  auto issue_tile = [&](int i) {
    issue_kv_tile<T, D, TILE, RS, WARPS * 32>(smem_raw + (i % STAGES) * STAGE, kcache, vcache, btab,
                                              p.block_shift, row, w.t0 + i * TILE, w.t1);
  };
#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < num_tiles) issue_tile(i);
    cp_async_commit();
  }

  // A fragments of Q: row gid = query head g0 + gid (zero past the slice); rows 8-15 are zero,
  // so only a0 / a2 are loaded and a1 = a3 = 0.
  uint32_t qa[KS][4];
  {
    const T* qrow = static_cast<const T*>(p.query) + static_cast<int64_t>(w.t) * p.q_stride +
                    static_cast<int64_t>(w.kvh * p.group + w.g0 + gid) * D;
    const bool live = gid < w.ng;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      qa[ks][0] = live ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16 + tig * 2) : 0u;
      qa[ks][1] = 0u;
      qa[ks][2] = live ? *reinterpret_cast<const uint32_t*>(qrow + ks * 16 + 8 + tig * 2) : 0u;
      qa[ks][3] = 0u;
    }
  }
  const float scale_log2 = p.scale * 1.4426950408889634f;
  float o[DT][4];  // [n-tile][c0..c3]; c2 / c3 (rows 8-15) stay zero
#pragma unroll
  for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  for (int i = 0; i < num_tiles; ++i) {
    cp_async_wait<STAGES - 2>();  // this thread's copies of tile i have landed
    __syncthreads();              // everyone's have; and every warp is done with tile i - 1
    if (i + STAGES - 1 < num_tiles) issue_tile(i + STAGES - 1);  // into tile i - 1's stage
    cp_async_commit();
    const int n = min(TILE, w.t1 - (w.t0 + i * TILE)) - warp * 16;  // valid keys of this warp
    if (n <= 0) continue;  // warp-uniform; the barrier is at the loop's top
    const T (*sK)[DP] = reinterpret_cast<const T (*)[DP]>(smem_raw + (i % STAGES) * STAGE) + warp * 16;
    const T (*sV)[DP] = sK + TILE;

    // S = Q K^T for the warp's 16 keys: two n-tiles of 8 keys.
    float sc[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks + 1 < KS; ks += 2) {
        uint32_t b[4];  // lane l addresses key nt*8 + (l & 7) at column ks*16 + (l >> 3) * 8
        cuda::ldmatrix_x4(b, &sK[nt * 8 + (lane & 7)][ks * 16 + (lane >> 3) * 8]);
        cuda::mma16816<T>(sc[nt], qa[ks], b[0], b[1]);
        cuda::mma16816<T>(sc[nt], qa[ks + 1], b[2], b[3]);
      }
      if constexpr (KS % 2 == 1) {
        const T* kr = &sK[nt * 8 + gid][(KS - 1) * 16 + tig * 2];
        cuda::mma16816<T>(sc[nt], qa[KS - 1], *reinterpret_cast<const uint32_t*>(kr),
                          *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }
    // Row gid's four logits (keys nt*8 + 2*tig + {0, 1}) in base 2, keys past the end masked.
    float x[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int key = (k >> 1) * 8 + tig * 2 + (k & 1);
      x[k] = key < n ? sc[k >> 1][k & 1] * scale_log2 : -INFINITY;
    }
    float tm = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
    tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, 1));
    tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, 2));  // the row's max over 16 keys (n >= 1)
    const float m_new = fmaxf(m, tm);
    const float alpha = exp2f(m - m_new);  // 0 while nothing was seen (m = -inf)
    m = m_new;
#pragma unroll
    for (int k = 0; k < 4; ++k) x[k] = exp2f(x[k] - m_new);
    l = l * alpha + (x[0] + x[1]) + (x[2] + x[3]);
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      o[dt][0] *= alpha;
      o[dt][1] *= alpha;
    }
    // O += P V over the 16 keys: P's accumulator layout is the A operand (rows 8-15 zero).
    const uint32_t pa[4] = {cuda::pack2<T>(x[0], x[1]), 0u, cuda::pack2<T>(x[2], x[3]), 0u};
#pragma unroll
    for (int dt = 0; dt < DT; dt += 2) {
      uint32_t b[4];  // lanes 0-15 address keys 0..15 at column dt*8, lanes 16-31 at dt*8 + 8
      cuda::ldmatrix_x4_trans(b, &sV[lane & 15][dt * 8 + (lane >> 4) * 8]);
      cuda::mma16816<T>(o[dt], pa, b[0], b[1]);
      cuda::mma16816<T>(o[dt + 1], pa, b[2], b[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages are reused for the merge below

  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  float* red_acc = reinterpret_cast<float*>(smem_raw);  // [WARPS][kMaxSliceHeads][D]
  float* red_ml = red_acc + WARPS * kMaxSliceHeads * D;  // [WARPS][kMaxSliceHeads][2]
  if (gid < w.ng) {
    float* dst = red_acc + (warp * kMaxSliceHeads + gid) * D + tig * 2;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      dst[dt * 8] = o[dt][0];
      dst[dt * 8 + 1] = o[dt][1];
    }
    if (tig == 0) {
      red_ml[(warp * kMaxSliceHeads + gid) * 2] = m * 0.6931471805599453f;  // natural-log units
      red_ml[(warp * kMaxSliceHeads + gid) * 2 + 1] = l;
    }
  }
  __syncthreads();
  store_warp_merge<T, D, kMaxSliceHeads, WARPS>(p, w, red_acc, red_ml);
}

template <typename T, int D, int STAGES, int WARPS>
constexpr int mma_kernel_smem_bytes() {
  constexpr int tiles = STAGES * 2 * 16 * WARPS * (D + 8) * static_cast<int>(sizeof(T));
  constexpr int red = warp_merge_smem_bytes<D, kMaxSliceHeads, WARPS>();
  return tiles > red ? tiles : red;
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

// Query heads per CTA: the group rounded up to a power of two, at most kMaxSliceHeads (larger
// groups take several CTAs, "slices", per KV head).
int slice_width(int group) {
  int ng = 1;
  while (ng < group && ng < kMaxSliceHeads) ng *= 2;
  return ng;
}

// CTAs per KV head: the group in slices of slice_width(group) query heads.
int slices_per_kv_head(int group) {
  const int ng = slice_width(group);
  return (group + ng - 1) / ng;
}

// At most this many decode CTAs are resident per SM (the token kernel: 128 threads, >= 48 KB of
// stages; the tensor-core kernel fits fewer): the workspace is sized with it, so it bounds every plan.
constexpr int kMaxResidentPerSm = 8;

// Splits per (token, head slice): 1 once the batch alone fills one wave of the CTAs that fit at
// once (resident_per_sm per SM); else as many as fill that wave, at most one per
// kSplitGranularity tokens of the max_seq_len hint. Each query then cuts its own context into that
// many parts (split_size). (The first plan aimed at 8 CTAs per SM, rounded
// up, i.e. several waves and more merging: on the H100 the one-wave plan was faster or equal in 9
// of 10 cases, e.g. B=1 L=16384 51.1 -> 41.4 us, B=64 L=512 76.8 -> 63.4 us; 2% slower at B=64
// L=16384. On an H200, 12th session: two or four waves on ragged batches of 16-256 W-nano-like
// sequences were equal or up to 10% slower; one wave already reads 2.8-4.1 TB/s there.)
// Depends only on the launch's shape hints, so a captured CUDA graph keeps a valid plan; never
// more splits than the plan for kMaxResidentPerSm.
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

// Plans the splits for a kernel's residency (asked once per kernel, with its opt-in to > 48 KB
// of smem), launches it over the flat grid, then the merge when split.
template <typename T, int D>
void launch_planned(void (*kernel)(TokenKernelParams), int threads, int smem, int& resident_per_sm,
                    TokenKernelParams p, const PagedAttentionArgs& a, cudaStream_t stream) {
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
  const int64_t ctas = static_cast<int64_t>(p.token_ranks) * p.num_kv_heads * p.slices * p.num_splits;
  if (ctas > INT32_MAX) throw std::invalid_argument("paged_attention: batch too large for one launch");
  kernel<<<static_cast<unsigned>(ctas), threads, smem, stream>>>(p);
  cuda::check_launch("paged_attention (decode kernel)");
  if (p.num_splits > 1) {
    const dim3 mgrid(num_tokens, p.num_q_heads);
    const size_t merge_smem = static_cast<size_t>(p.num_splits) * sizeof(float);
    merge_splits_kernel<T><<<mgrid, 128, merge_smem, stream>>>(p, D);  // whole warps
    cuda::check_launch("paged_attention (merge splits)");
  }
}

template <typename T, int D, int NG, int STAGES, int TILE>
void launch_token_kernel(const TokenKernelParams& p, const PagedAttentionArgs& a, cudaStream_t stream) {
  static int resident_per_sm = 0;
  launch_planned<T, D>(token_attention_kernel<T, D, NG, STAGES, TILE>, kTokenKernelWarps * 32,
                       token_kernel_smem_bytes<T, D, NG, STAGES, TILE>(), resident_per_sm, p, a, stream);
}

template <typename T, int D, int STAGES, int WARPS>
void launch_mma_kernel(const TokenKernelParams& p, const PagedAttentionArgs& a, cudaStream_t stream) {
  static int resident_per_sm = 0;
  launch_planned<T, D>(mma_token_attention_kernel<T, D, STAGES, WARPS>, WARPS * 32,
                       mma_kernel_smem_bytes<T, D, STAGES, WARPS>(), resident_per_sm, p, a, stream);
}

// Kernel choice for measurement runs: PAGEDLLM_DECODE_VARIANT = 0 (the default policy, see
// launch_typed), 1 (the CUDA-core token kernel everywhere), 5 (the tensor-core kernel wherever it
// can run, groups 1-2 included). Read once. (Also measured and removed: variant 7, the K/V copy
// loop of before issue_kv_tile's fixed-column path; the tensor-core kernel with 2 stages, 3 CTAs
// per SM; the split count rounded up; on an H200, token-kernel pipelines 4 x 32, 2 x 64 and
// 6 x 16 tokens, 4-16% slower than 3 x 32 at group 2. benchmarks/kernels/NOTES.md.)
int decode_variant() {
  static const int v = [] {
    const char* env = std::getenv("PAGEDLLM_DECODE_VARIANT");
    return env ? std::atoi(env) : 0;
  }();
  return v;
}

// Default policy: the tensor-core kernel for slices of >= 4 query heads (fp16 / bf16, D <= 128),
// the CUDA-core token kernel otherwise. Measured on an H100 (benchmarks/kernels/NOTES.md): at
// group 4 the tensor-core kernel is 4-18% faster on uniform and long ragged batches (B=64
// L=4096 426.8 -> 394.1 us); at group 2 the token kernel is 12% faster on W-nano-like ragged
// batches (228 vs 260 us): its CUDA-core work halves with the group, and its 48 KB stages fit
// 4 CTAs per SM against the tensor-core kernel's 2.
template <typename T, int D, int NG>
void launch_typed(const TokenKernelParams& p, const PagedAttentionArgs& a, cudaStream_t stream) {
  constexpr bool has_mma = !std::is_same_v<T, float> && D <= 128;
  if constexpr (has_mma) {
    const int variant = decode_variant();
    const bool use_mma = variant == 5 || (variant != 1 && NG >= 4);
    if (use_mma) {  // the binding guarantees 16-byte aligned query rows (read as 4-byte pairs here)
      launch_mma_kernel<T, D, kMmaStages, kMmaWarps>(p, a, stream);
      return;
    }
  }
  launch_token_kernel<T, D, NG, kStages, tile_tokens<T, D, kTileCapBytes>()>(p, a, stream);
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

void launch_token_attention(const PagedAttentionArgs& a, bool skip_long, int64_t token_ranks) {
  if (a.num_tokens == 0 || a.num_seqs == 0 || token_ranks <= 0) return;
  TokenKernelParams p{};  // the split plan and workspace pointers are set by launch_planned
  p.out = a.out;
  p.query = a.query;
  p.kv_cache = a.kv_cache;
  p.block_table = a.block_table;
  p.query_start_loc = a.query_start_loc;
  p.seq_lens = a.seq_lens;
  p.token_order = a.token_order;
  p.q_stride = a.q_stride;
  if (a.num_blocks * a.block_size > INT32_MAX) {  // issue_kv_tile computes slots in 32 bits
    throw std::invalid_argument("paged_attention: KV cache of >= 2^31 slots (num_blocks * block_size)");
  }
  p.kv_plane = a.num_blocks * a.block_size * static_cast<int64_t>(a.num_kv_heads) * a.head_dim;
  p.num_tokens = static_cast<int>(a.num_tokens);
  p.token_ranks = static_cast<int>(token_ranks);  // <= num_tokens (paged_attention_cuda clamps)
  p.num_seqs = a.num_seqs;
  p.max_blocks = a.max_blocks_per_seq;
  p.num_q_heads = a.num_q_heads;
  p.num_kv_heads = a.num_kv_heads;
  p.group = a.num_q_heads / a.num_kv_heads;
  const int ng = slice_width(p.group);
  p.slice_width = ng;
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
