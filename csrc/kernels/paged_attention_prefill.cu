// The tensor-core kernel of paged attention for query chunks of >= kPrefillMmaMinQueryLen tokens
// (prefill, chunked prefill, prefix-cache hits), fp16 / bf16.
//
// One CTA of 4 warps per (64-row query tile, KV head, sequence). Rows are (token, head) pairs of
// the KV head's query-head group, token-major (row r = token r / G, head r % G), so the GQA group
// shares every K/V tile it loads. Each warp owns 16 rows; S = Q K^T and O += P V run on
// mma.sync.m16n8k16 with float accumulators; the S fragment is reused as the A operand of P V
// (flash-attention-2 register layout), so P never touches shared memory. Online softmax in base 2.
// K/V tiles of 64 keys are gathered from the pages by cp.async into padded shared memory
// (conflict-free fragment reads), double-buffered so the next tile loads during the math.
#include <algorithm>
#include <cmath>
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

constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kWarps = 4;
constexpr int kStages = 2;

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

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) prefill_attention_kernel(const PrefillParams p) {
  constexpr int DP = D + 8;  // padded smem row (elements): fragment reads hit 32 distinct banks
  constexpr int KS = D / 16;       // k-steps of Q K^T
  constexpr int DT = D / 8;        // n-tiles of P V (even for every supported D)
  static_assert(DT % 2 == 0, "ldmatrix.x4 covers two n-tiles");
  constexpr int NT = kBlockN / 8;  // n-tiles of Q K^T
  // [kStages][K tile, V tile][kBlockN][DP], filled by cp.async kStages - 1 tiles ahead.
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int s = blockIdx.z, kvh = blockIdx.y;
  const int q_begin = p.query_start_loc[s];
  const int q_len = p.query_start_loc[s + 1] - q_begin;
  if (q_len < kPrefillMmaMinQueryLen) return;  // the token kernel owns it
  const int G = p.group;
  const int rows = q_len * G;
  const int row0 = blockIdx.x * kBlockM;
  if (row0 >= rows) return;
  const int ctx = p.seq_lens[s];
  const int first_pos = ctx - q_len;  // position of the chunk's first token
  const int row_last = min(row0 + kBlockM, rows) - 1;
  const int kv_end = first_pos + row_last / G + 1;
  const int kv_lo = p.sliding_window > 0 ? max(0, first_pos + row0 / G - p.sliding_window + 1) : 0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const int rA = row0 + warp * 16 + gid, rB = rA + 8;
  const int posA = first_pos + rA / G, posB = first_pos + rB / G;
  const bool okA = rA < rows, okB = rB < rows;

  // Q fragments for the warp's 16 rows, [KS][4] packed pairs.
  uint32_t qa[KS][4];
  {
    const T* q = static_cast<const T*>(p.query);
    const T* qA = q + static_cast<int64_t>(q_begin + rA / G) * p.q_stride + static_cast<int64_t>(kvh * G + rA % G) * D;
    const T* qB = q + static_cast<int64_t>(q_begin + rB / G) * p.q_stride + static_cast<int64_t>(kvh * G + rB % G) * D;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int c = ks * 16 + tig * 2;
      qa[ks][0] = okA ? *reinterpret_cast<const uint32_t*>(qA + c) : 0u;
      qa[ks][1] = okB ? *reinterpret_cast<const uint32_t*>(qB + c) : 0u;
      qa[ks][2] = okA ? *reinterpret_cast<const uint32_t*>(qA + c + 8) : 0u;
      qa[ks][3] = okB ? *reinterpret_cast<const uint32_t*>(qB + c + 8) : 0u;
    }
  }

  float o[DT][4];
#pragma unroll
  for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;  // l: this lane's partial sums

  const int64_t row = static_cast<int64_t>(p.num_kv_heads) * D;
  const T* kcache = static_cast<const T*>(p.kv_cache) + static_cast<int64_t>(kvh) * D;
  const T* vcache = kcache + p.kv_plane;
  const int32_t* btab = p.block_table + static_cast<int64_t>(s) * p.max_blocks;
  const int bmask = (1 << p.block_shift) - 1;
  constexpr int kChunks = kBlockN * D / 8;  // 16-byte chunks per tile
  constexpr int kStageBytes = 2 * kBlockN * DP * static_cast<int>(sizeof(T));

  const int kt0 = kv_lo / kBlockN * kBlockN;
  const int num_tiles = (kv_end - kt0 + kBlockN - 1) / kBlockN;
  // Gather the K and V tiles of keys kt0 + i * 64 .. + 63 from their pages (zero past kv_end).
  auto issue_tile = [&](int i) {
    T* sk = reinterpret_cast<T*>(smem_raw + (i % kStages) * kStageBytes);
    T* sv = sk + kBlockN * DP;
    const int kt = kt0 + i * kBlockN;
#pragma unroll 4
    for (int c = tid; c < kChunks; c += kWarps * 32) {
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
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < num_tiles) issue_tile(i);
    cp_async_commit();
  }

  for (int it = 0; it < num_tiles; ++it) {
    const int kt = kt0 + it * kBlockN;
    if (it + kStages - 1 < num_tiles) issue_tile(it + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();
    const T (*sK)[DP] = reinterpret_cast<const T (*)[DP]>(smem_raw + (it % kStages) * kStageBytes);
    const T (*sV)[DP] = sK + kBlockN;

    // S = Q K^T for 16 rows x 64 keys.
    float sc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
      // K B-fragments of two k-steps per ldmatrix.x4: lane l addresses key nt*8 + (l & 7) at
      // column ks*16 + (l >> 3) * 8.
#pragma unroll
      for (int ks = 0; ks + 1 < KS; ks += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, &sK[nt * 8 + (lane & 7)][ks * 16 + (lane >> 3) * 8]);
        mma16816<T>(sc[nt], qa[ks], b[0], b[1]);
        mma16816<T>(sc[nt], qa[ks + 1], b[2], b[3]);
      }
      if constexpr (KS % 2 == 1) {
        const T* kr = &sK[nt * 8 + gid][(KS - 1) * 16 + tig * 2];
        mma16816<T>(sc[nt], qa[KS - 1], *reinterpret_cast<const uint32_t*>(kr),
                    *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }
    // Mask (causal, window, padding rows) and scale into base-2 logits; tile max per row.
    float tmA = -INFINITY, tmB = -INFINITY;
    // Tiles wholly below both rows' diagonals (and no window) need no mask.
    const bool unmasked = okA && okB && p.sliding_window <= 0 && kt + kBlockN - 1 <= posA;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (unmasked) {
          sc[nt][i] *= p.scale_log2;
          continue;
        }
        const int key = kt + nt * 8 + tig * 2 + (i & 1);
        const int pos = i < 2 ? posA : posB;
        const bool ok = (i < 2 ? okA : okB) && key <= pos &&
                        (p.sliding_window <= 0 || key > pos - p.sliding_window);
        sc[nt][i] = ok ? sc[nt][i] * p.scale_log2 : -INFINITY;
      }
      tmA = fmaxf(tmA, fmaxf(sc[nt][0], sc[nt][1]));
      tmB = fmaxf(tmB, fmaxf(sc[nt][2], sc[nt][3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, off));
      tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, off));
    }
    const float nA = fmaxf(mA, tmA), nB = fmaxf(mB, tmB);
    const float baseA = nA == -INFINITY ? 0.0f : nA, baseB = nB == -INFINITY ? 0.0f : nB;
    const float alA = exp2f(mA - baseA), alB = exp2f(mB - baseB);
    mA = nA;
    mB = nB;
    lA *= alA;
    lB *= alB;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      sc[nt][0] = exp2f(sc[nt][0] - baseA);
      sc[nt][1] = exp2f(sc[nt][1] - baseA);
      sc[nt][2] = exp2f(sc[nt][2] - baseB);
      sc[nt][3] = exp2f(sc[nt][3] - baseB);
      lA += sc[nt][0] + sc[nt][1];
      lB += sc[nt][2] + sc[nt][3];
    }
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      o[dt][0] *= alA;
      o[dt][1] *= alA;
      o[dt][2] *= alB;
      o[dt][3] *= alB;
    }
    // O += P V: P's accumulator layout is the A-operand layout of the next mma.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
      pa[1] = pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
      pa[2] = pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      pa[3] = pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
      // V B-fragments for two n-tiles per ldmatrix.x4.trans: lanes 0-15 address keys
      // kk*16 + 0..15 at column dt*8, lanes 16-31 the same keys at column dt*8 + 8.
#pragma unroll
      for (int dt = 0; dt < DT; dt += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, &sV[kk * 16 + (lane & 15)][dt * 8 + (lane >> 4) * 8]);
        mma16816<T>(o[dt], pa, b[0], b[1]);
        mma16816<T>(o[dt + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // the next issue overwrites this stage
  }
  cp_async_wait<0>();

#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    lA += __shfl_xor_sync(0xffffffffu, lA, off);
    lB += __shfl_xor_sync(0xffffffffu, lB, off);
  }
  const float invA = lA > 0.0f ? 1.0f / lA : 0.0f, invB = lB > 0.0f ? 1.0f / lB : 0.0f;
  T* out = static_cast<T*>(p.out);
  T* oA = out + (static_cast<int64_t>(q_begin + rA / G) * p.num_q_heads + kvh * G + rA % G) * D;
  T* oB = out + (static_cast<int64_t>(q_begin + rB / G) * p.num_q_heads + kvh * G + rB % G) * D;
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) {
    const int c = dt * 8 + tig * 2;
    if (okA) *reinterpret_cast<uint32_t*>(oA + c) = pack2<T>(o[dt][0] * invA, o[dt][1] * invA);
    if (okB) *reinterpret_cast<uint32_t*>(oB + c) = pack2<T>(o[dt][2] * invB, o[dt][3] * invB);
  }
}

template <typename T, int D>
void launch_prefill_typed(const PrefillParams& p, const PagedAttentionArgs& a) {
  const int tiles = (a.max_query_len * p.group + kBlockM - 1) / kBlockM;
  const dim3 grid(tiles, a.num_kv_heads, a.num_seqs);
  constexpr int smem = kStages * 2 * kBlockN * (D + 8) * static_cast<int>(sizeof(T));
  static bool configured = false;  // opt in to > 48 KB of dynamic shared memory once
  if (!configured) {
    cudaFuncSetAttribute(prefill_attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    configured = true;
  }
  prefill_attention_kernel<T, D><<<grid, kWarps * 32, smem, cuda::as_stream(a.stream)>>>(p);
  cuda::check_launch("paged_attention (prefill kernel)");
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
