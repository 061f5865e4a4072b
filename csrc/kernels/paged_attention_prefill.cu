// The tensor-core kernel of paged attention for query chunks of >= kPrefillMmaMinQueryLen tokens
// (prefill, chunked prefill, prefix-cache hits), fp16 / bf16.
//
// One CTA of WARPS warps per (32 * WARPS-row query tile, KV head, sequence). Rows are (token,
// head) pairs of the KV head's query-head group, token-major (row r = token r / G, head r % G), so
// the GQA group shares every K/V tile it loads. Each warp owns 32 rows (two m16 tiles); S = Q K^T
// and O += P V run on mma.sync.m16n8k16 with float accumulators; the S fragment is reused as the
// A operand of P V (flash-attention-2 register layout), so P never touches shared memory. Online
// softmax in base 2. K/V tiles of 64 keys are gathered from the pages by cp.async into padded
// shared memory (conflict-free fragment reads), STAGES-buffered so the next tiles load during
// the math. Taller query tiles share each K/V tile among more rows: less L2 traffic per FLOP.
#include <algorithm>
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
using cuda::ldmatrix_x4;
using cuda::ldmatrix_x4_trans;
using cuda::mma16816;
using cuda::pack2;

constexpr int kBlockN = 64;  // keys per K/V tile
constexpr int kMTiles = 2;   // m16 row tiles per warp

struct PrefillParams {
  void* out;                       // [T, Hq, D]
  const void* query;               // [T, Hq, D], token stride q_stride
  const void* kv_cache;            // [2, NB, BS, Hkv, D]
  const int32_t* block_table;      // [S, max_blocks]
  const int32_t* query_start_loc;  // [S + 1]
  const int32_t* seq_lens;         // [S]
  int64_t q_stride;
  int64_t kv_plane;
  int max_blocks;
  int num_q_heads;
  int num_kv_heads;
  int group;
  int block_shift;
  float scale_log2;                // scale * log2(e)
  int sliding_window;
};

// Grid: (KV heads, row tiles, sequences), the last (longest-context) row tile launched first so
// the short ones fill the tail.
// Each warp owns kMTiles m16 tiles (32 rows): every K/V fragment read from shared memory feeds two
// mma (with 16 rows per warp the kernel reached ~0.6x FA2). Their Q fragments would need 64 more
// registers than the o and S accumulators leave, so the CTA's Q tile waits in shared memory and
// is re-read by ldmatrix per K/V tile.
template <typename T, int D, int WARPS, int STAGES>
__global__ void __launch_bounds__(WARPS * 32) prefill_attention_kernel(const PrefillParams p) {
  constexpr int MT = kMTiles;
  constexpr int kRowsPerWarp = 16 * MT;
  constexpr int kBlockM = WARPS * kRowsPerWarp;
  constexpr int kThreads = WARPS * 32;
  constexpr int DP = D + 8;  // padded smem row (elements): fragment reads hit 32 distinct banks
  constexpr int KS = D / 16;       // k-steps of Q K^T
  constexpr int DT = D / 8;        // n-tiles of P V (even for every supported D)
  static_assert(DT % 2 == 0, "ldmatrix.x4 covers two n-tiles");
  constexpr int NT = kBlockN / 8;  // n-tiles of Q K^T
  constexpr int kStageBytes = 2 * kBlockN * DP * static_cast<int>(sizeof(T));
  // [STAGES][K tile, V tile][kBlockN][DP], filled by cp.async STAGES - 1 tiles ahead; then the
  // Q tile [kBlockM][DP].
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw + STAGES * kStageBytes);

  const int s = blockIdx.z;
  const int kvh = blockIdx.x;
  const int row_tile = gridDim.y - 1 - blockIdx.y;
  const int q_begin = p.query_start_loc[s];
  const int q_len = p.query_start_loc[s + 1] - q_begin;
  if (q_len < kPrefillMmaMinQueryLen) return;  // the token kernel owns it
  const int G = p.group;
  const int rows = q_len * G;
  const int row0 = row_tile * kBlockM;
  if (row0 >= rows) return;
  const int ctx = p.seq_lens[s];
  const int first_pos = ctx - q_len;  // position of the chunk's first token
  const int row_last = min(row0 + kBlockM, rows) - 1;
  const int kv_end = first_pos + row_last / G + 1;
  const int kv_lo = p.sliding_window > 0 ? max(0, first_pos + row0 / G - p.sliding_window + 1) : 0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  // This lane's rows: gid (A) and gid + 8 (B) of each of the warp's m16 tiles.
  int posA[MT], posB[MT];
  bool okA[MT], okB[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int rA = row0 + warp * kRowsPerWarp + mt * 16 + gid, rB = rA + 8;
    posA[mt] = first_pos + rA / G;
    posB[mt] = first_pos + rB / G;
    okA[mt] = rA < rows;
    okB[mt] = rB < rows;
  }

  // Query row r (token-major (token, head) pair) of this KV head's group.
  const T* q = static_cast<const T*>(p.query);
  auto q_row = [&](int r) {
    return q + static_cast<int64_t>(q_begin + r / G) * p.q_stride + static_cast<int64_t>(kvh * G + r % G) * D;
  };
  // The CTA's Q tile (rows past the chunk zero-filled); it joins the first K/V tile's group.
  for (int c = tid; c < kBlockM * D / 8; c += kThreads) {
    const int r = c / (D / 8), col = (c % (D / 8)) * 8;
    const bool ok = row0 + r < rows;
    cp_async16(sQ + r * DP + col, ok ? q_row(row0 + r) + col : q, ok ? 16 : 0);
  }
  // A fragment of k-step ks for m tile mt by ldmatrix.x4 from the Q tile (lane l addresses row
  // l & 15 at column ks * 16 + (l >> 4) * 8).
  auto load_a = [&](uint32_t (&a)[4], int mt, int ks) {
    ldmatrix_x4(a, sQ + (warp * kRowsPerWarp + mt * 16 + (lane & 15)) * DP + ks * 16 + (lane >> 4) * 8);
  };

  float o[MT][DT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < DT; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
  float mA[MT], mB[MT], lA[MT], lB[MT];  // l: this lane's partial sums
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    mA[mt] = mB[mt] = -INFINITY;
    lA[mt] = lB[mt] = 0.0f;
  }

  const int64_t row = static_cast<int64_t>(p.num_kv_heads) * D;
  const T* kcache = static_cast<const T*>(p.kv_cache) + static_cast<int64_t>(kvh) * D;
  const T* vcache = kcache + p.kv_plane;
  const int32_t* btab = p.block_table + static_cast<int64_t>(s) * p.max_blocks;
  const int bmask = (1 << p.block_shift) - 1;
  constexpr int kChunks = kBlockN * D / 8;  // 16-byte chunks per tile

  const int kt0 = kv_lo / kBlockN * kBlockN;
  const int num_tiles = (kv_end - kt0 + kBlockN - 1) / kBlockN;
  // Gather the K and V tiles of keys kt0 + i * 64 .. + 63 from their pages (zero past kv_end).
  auto issue_tile = [&](int i) {
    T* sk = reinterpret_cast<T*>(smem_raw + (i % STAGES) * kStageBytes);
    T* sv = sk + kBlockN * DP;
    const int kt = kt0 + i * kBlockN;
#pragma unroll 4
    for (int c = tid; c < kChunks; c += kThreads) {
      const int key = c / (D / 8), col = (c % (D / 8)) * 8;
      const int kp = kt + key;
      const T* ksrc = kcache;
      const T* vsrc = vcache;
      int bytes = 0;
      if (kp < kv_end) {
        const int64_t slot = (static_cast<int64_t>(btab[kp >> p.block_shift]) << p.block_shift) | (kp & bmask);
        ksrc += slot * row + col;
        vsrc += slot * row + col;
        bytes = 16;
      }
      cp_async16(sk + key * DP + col, ksrc, bytes);
      cp_async16(sv + key * DP + col, vsrc, bytes);
    }
  };
#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < num_tiles) issue_tile(i);
    cp_async_commit();
  }

  for (int it = 0; it < num_tiles; ++it) {
    const int kt = kt0 + it * kBlockN;
    if (it + STAGES - 1 < num_tiles) issue_tile(it + STAGES - 1);
    cp_async_commit();
    cp_async_wait<STAGES - 1>();
    __syncthreads();
    const T (*sK)[DP] = reinterpret_cast<const T (*)[DP]>(smem_raw + (it % STAGES) * kStageBytes);
    const T (*sV)[DP] = sK + kBlockN;

    // S = Q K^T for the warp's rows x 64 keys, k-steps outermost: each A fragment feeds all 8
    // n-tiles, each K B-fragment all MT m tiles. One ldmatrix.x4 reads the B fragments of n-tiles
    // nt and nt + 1 (lanes 0-15: keys nt*8 + (l & 7) at columns ks*16 + ((l >> 3) & 1) * 8;
    // lanes 16-31 the same for nt + 1).
    float sc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) sc[mt][nt][0] = sc[mt][nt][1] = sc[mt][nt][2] = sc[mt][nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) load_a(a[mt], mt, ks);
#pragma unroll
      for (int nt = 0; nt < NT; nt += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, &sK[(nt + (lane >> 4)) * 8 + (lane & 7)][ks * 16 + ((lane >> 3) & 1) * 8]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(sc[mt][nt], a[mt], b[0], b[1]);
          mma16816<T>(sc[mt][nt + 1], a[mt], b[2], b[3]);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Mask (causal, window, padding rows) and scale into base-2 logits; tile max per row.
      float tmA = -INFINITY, tmB = -INFINITY;
      // Tiles wholly below both rows' diagonals (and no window) need no mask.
      const bool unmasked = okA[mt] && okB[mt] && p.sliding_window <= 0 && kt + kBlockN - 1 <= posA[mt];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (unmasked) {
            sc[mt][nt][i] *= p.scale_log2;
            continue;
          }
          const int key = kt + nt * 8 + tig * 2 + (i & 1);
          const int pos = i < 2 ? posA[mt] : posB[mt];
          const bool ok = (i < 2 ? okA[mt] : okB[mt]) && key <= pos &&
                          (p.sliding_window <= 0 || key > pos - p.sliding_window);
          sc[mt][nt][i] = ok ? sc[mt][nt][i] * p.scale_log2 : -INFINITY;
        }
        tmA = fmaxf(tmA, fmaxf(sc[mt][nt][0], sc[mt][nt][1]));
        tmB = fmaxf(tmB, fmaxf(sc[mt][nt][2], sc[mt][nt][3]));
      }
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, off));
        tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, off));
      }
      const float nA = fmaxf(mA[mt], tmA), nB = fmaxf(mB[mt], tmB);
      const float baseA = nA == -INFINITY ? 0.0f : nA, baseB = nB == -INFINITY ? 0.0f : nB;
      const float alA = exp2f(mA[mt] - baseA), alB = exp2f(mB[mt] - baseB);
      mA[mt] = nA;
      mB[mt] = nB;
      lA[mt] *= alA;
      lB[mt] *= alB;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        sc[mt][nt][0] = exp2f(sc[mt][nt][0] - baseA);
        sc[mt][nt][1] = exp2f(sc[mt][nt][1] - baseA);
        sc[mt][nt][2] = exp2f(sc[mt][nt][2] - baseB);
        sc[mt][nt][3] = exp2f(sc[mt][nt][3] - baseB);
        lA[mt] += sc[mt][nt][0] + sc[mt][nt][1];
        lB[mt] += sc[mt][nt][2] + sc[mt][nt][3];
      }
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        o[mt][dt][0] *= alA;
        o[mt][dt][1] *= alA;
        o[mt][dt][2] *= alB;
        o[mt][dt][3] *= alB;
      }
    }
    // O += P V: P's accumulator layout is the A-operand layout of the next mma.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack2<T>(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
        pa[mt][1] = pack2<T>(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
        pa[mt][2] = pack2<T>(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2<T>(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
      }
      // V B-fragments for two n-tiles per ldmatrix.x4.trans: lanes 0-15 address keys
      // kk*16 + 0..15 at column dt*8, lanes 16-31 the same keys at column dt*8 + 8.
#pragma unroll
      for (int dt = 0; dt < DT; dt += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, &sV[kk * 16 + (lane & 15)][dt * 8 + (lane >> 4) * 8]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(o[mt][dt], pa[mt], b[0], b[1]);
          mma16816<T>(o[mt][dt + 1], pa[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next issue overwrites this stage
  }
  cp_async_wait<0>();

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float sumA = lA[mt], sumB = lB[mt];
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      sumA += __shfl_xor_sync(0xffffffffu, sumA, off);
      sumB += __shfl_xor_sync(0xffffffffu, sumB, off);
    }
    const float invA = sumA > 0.0f ? 1.0f / sumA : 0.0f, invB = sumB > 0.0f ? 1.0f / sumB : 0.0f;
    const int rA = row0 + warp * kRowsPerWarp + mt * 16 + gid, rB = rA + 8;
    T* oA = out + (static_cast<int64_t>(q_begin + rA / G) * p.num_q_heads + kvh * G + rA % G) * D;
    T* oB = out + (static_cast<int64_t>(q_begin + rB / G) * p.num_q_heads + kvh * G + rB % G) * D;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      const int c = dt * 8 + tig * 2;
      if (okA[mt]) *reinterpret_cast<uint32_t*>(oA + c) = pack2<T>(o[mt][dt][0] * invA, o[mt][dt][1] * invA);
      if (okB[mt]) *reinterpret_cast<uint32_t*>(oB + c) = pack2<T>(o[mt][dt][2] * invB, o[mt][dt][3] * invB);
    }
  }
}

template <typename T, int D, int WARPS, int STAGES>
void launch_prefill_kernel(const PrefillParams& p, const PagedAttentionArgs& a) {
  constexpr int kBlockM = WARPS * 16 * kMTiles;
  const int tiles = (a.max_query_len * p.group + kBlockM - 1) / kBlockM;
  const dim3 grid(a.num_kv_heads, tiles, a.num_seqs);
  constexpr int smem = (STAGES * 2 * kBlockN + kBlockM) * (D + 8) * static_cast<int>(sizeof(T));
  const auto kernel = prefill_attention_kernel<T, D, WARPS, STAGES>;
  static bool configured = false;  // opt in to > 48 KB of dynamic shared memory once
  if (!configured) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    configured = true;
  }
  kernel<<<grid, WARPS * 32, smem, cuda::as_stream(a.stream)>>>(p);
  cuda::check_launch("paged_attention (prefill kernel)");
}

// Kernel shape for measurement runs: PAGEDLLM_PREFILL_VARIANT = 0 (the default: 4 warps, 128-row
// tiles), 1 (8 warps, 256-row tiles: 4-6% faster on 8k-token prompts, up to 20% slower on
// short ones). Read once. (Also measured on an H200 and removed: 16 rows per warp with Q in
// registers, 4 or 8 warps, in order or heaviest first, 2 or 3 stages: 0.5-0.87x SDPA where 32
// rows per warp reach 0.80-1.11x. benchmarks/kernels/NOTES.md.)
int prefill_variant() {
  static const int v = [] {
    const char* env = std::getenv("PAGEDLLM_PREFILL_VARIANT");
    return env ? std::atoi(env) : 0;
  }();
  return v;
}

template <typename T, int D>
void launch_prefill_typed(const PrefillParams& p, const PagedAttentionArgs& a) {
  switch (prefill_variant()) {
    case 1: launch_prefill_kernel<T, D, 8, 2>(p, a); break;
    default: launch_prefill_kernel<T, D, 4, 2>(p, a); break;
  }
}

bool mma_head_dim(int d) { return d == 64 || d == 80 || d == 96 || d == 128; }

}  // namespace

bool prefill_mma_applies(const PagedAttentionArgs& a) {
  return (a.dtype == DType::kBFloat16 || a.dtype == DType::kFloat16) && mma_head_dim(a.head_dim) &&
         a.max_query_len >= kPrefillMmaMinQueryLen && a.q_stride % 8 == 0 &&
         reinterpret_cast<uintptr_t>(a.query) % 16 == 0 && reinterpret_cast<uintptr_t>(a.kv_cache) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
}

void launch_prefill_attention(const PagedAttentionArgs& a) {
  PrefillParams p{};
  p.out = a.out;
  p.query = a.query;
  p.kv_cache = a.kv_cache;
  p.block_table = a.block_table;
  p.query_start_loc = a.query_start_loc;
  p.seq_lens = a.seq_lens;
  p.q_stride = a.q_stride;
  p.kv_plane = a.num_blocks * a.block_size * static_cast<int64_t>(a.num_kv_heads) * a.head_dim;
  p.max_blocks = a.max_blocks_per_seq;
  p.num_q_heads = a.num_q_heads;
  p.num_kv_heads = a.num_kv_heads;
  p.group = a.num_q_heads / a.num_kv_heads;
  int shift = 0;
  while ((1 << shift) < a.block_size) ++shift;
  p.block_shift = shift;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  p.sliding_window = a.sliding_window;
  const auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    switch (a.head_dim) {
      case 64: launch_prefill_typed<T, 64>(p, a); break;
      case 80: launch_prefill_typed<T, 80>(p, a); break;
      case 96: launch_prefill_typed<T, 96>(p, a); break;
      case 128: launch_prefill_typed<T, 128>(p, a); break;
      default: throw std::invalid_argument("paged_attention: no tensor-core kernel for this head_dim");
    }
  };
  if (a.dtype == DType::kBFloat16) run(static_cast<__nv_bfloat16*>(nullptr));
  else run(static_cast<__half*>(nullptr));
}

}  // namespace pagedllm::kernels::attn
