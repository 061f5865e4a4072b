// decode_linear on CUDA (design and work split: decode_linear.h).
//
// Fragment mapping. mma.m16n8k16 sums over its 16 k columns in any order, so the k order inside
// a 32-wide chunk may be permuted, as long as A and B use the same permutation. Lane (g = lane/4,
// t = lane%4) loads 16 contiguous bytes, k = kc + 8t .. kc + 8t + 7, of weight rows g and g+8 and
// uses them for two mma k-steps: in step s its logical columns {2t, 2t+1} are k = kc + 8t + 4s +
// {0, 1} and {2t+8, 2t+9} are k = kc + 8t + 4s + {2, 3}. The B operand (x^T, token g of the
// column tile) then needs the same k for logical rows {2t, 2t+1, 2t+8, 2t+9}: again 16
// contiguous bytes of x per lane and chunk. Weights are read with 16-byte loads and no
// shuffles; each 4 lanes read 64 contiguous bytes of a row.
#include <cooperative_groups.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/decode_linear.h"
#include "kernels/tensor_core.cuh"

namespace pagedllm::kernels {
namespace {

constexpr int kWarps = kDecodeLinearRowsPerCta / 16;
constexpr int kThreads = kWarps * 32;
constexpr int kChunkK = 32;                                   // k per lane's 16-byte load x 4 lanes
constexpr int kChunksPerGroup = kDecodeLinearGroupK / kChunkK;
constexpr int kXPad = 32;                                     // elements; see decode_linear_plan.cc
constexpr int kPartialRow = kDecodeLinearRowsPerCta + 4;      // floats; +4 spreads the stores' banks

// Weights are read once per call: keep them out of L1.
__device__ __forceinline__ uint4 load_streaming16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// One warp's weights for kDecodeLinearGroupK of K: rows g (lo) and g + 8 (hi), one 16-byte word
// per 32-wide chunk.
struct WeightGroup {
  uint4 lo[kChunksPerGroup];
  uint4 hi[kChunksPerGroup];
};

template <typename T>
__device__ __forceinline__ void load_group(WeightGroup& w, const T* row_lo, const T* row_hi, int64_t k) {
#pragma unroll
  for (int c = 0; c < kChunksPerGroup; ++c) {
    w.lo[c] = load_streaming16(row_lo + k + c * kChunkK);
    w.hi[c] = load_streaming16(row_hi + k + c * kChunkK);
  }
}

// acc[j] (tokens 8j..8j+7) += this warp's 16 weight rows . x tile, over one group of K.
// xs_lane points at the lane's x word of token g, chunk 0 of the group: xs + g * x_row + k + 8t.
template <typename T, int NT>
__device__ __forceinline__ void mma_group(float (&acc)[NT][4], const WeightGroup& w, const T* xs_lane,
                                          int x_row) {
#pragma unroll
  for (int c = 0; c < kChunksPerGroup; ++c) {
    const uint32_t a0[4] = {w.lo[c].x, w.hi[c].x, w.lo[c].y, w.hi[c].y};  // k-step 0
    const uint32_t a1[4] = {w.lo[c].z, w.hi[c].z, w.lo[c].w, w.hi[c].w};  // k-step 1
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const uint4 b = *reinterpret_cast<const uint4*>(xs_lane + j * 8 * x_row + c * kChunkK);
      cuda::mma16816<T>(acc[j], a0, b.x, b.y);
      cuda::mma16816<T>(acc[j], a1, b.z, b.w);
    }
  }
}

// grid (slices, row_tiles), cluster (slices, 1, 1), kThreads threads, dynamic smem from the plan.
// NT: 8-token column tiles (tokens past num_rows are zeros in shared memory and never stored).
template <typename T, int NT>
__global__ void __launch_bounds__(kThreads) decode_linear_kernel(DecodeLinearArgs a, int groups) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  extern __shared__ __align__(16) unsigned char smem[];
  cg::cluster_group cluster = cg::this_cluster();
  const int slices = gridDim.x, slice = blockIdx.x;  // the cluster: every slice of one row tile
  const int64_t row0 = int64_t{blockIdx.y} * kDecodeLinearRowsPerCta;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int group_begin = slice * groups / slices, num_groups = (slice + 1) * groups / slices - group_begin;
  const int64_t k_begin = int64_t{group_begin} * kDecodeLinearGroupK;
  const int slice_k = num_groups * kDecodeLinearGroupK;
  const int x_row = slice_k + kXPad;  // elements between tokens of the x tile

  // This warp's weight rows, at the lane's 16-byte column; the first group's loads go out before
  // the x tile is even requested.
  const T* row_lo = static_cast<const T*>(a.weight) + (row0 + warp * 16 + g) * a.in_features + k_begin + 8 * t;
  const T* row_hi = row_lo + 8 * a.in_features;
  WeightGroup cur, next;
  load_group(cur, row_lo, row_hi, 0);

  // x[:, k_begin : k_begin + slice_k] -> xs [NT * 8][x_row]; padding tokens are zero-filled.
  T* xs = reinterpret_cast<T*>(smem);
  const T* x = static_cast<const T*>(a.x);
  const int words_per_token = slice_k / 8;
  for (int i = threadIdx.x; i < NT * 8 * words_per_token; i += kThreads) {
    const int token = i / words_per_token, word = i - token * words_per_token;
    const bool real = token < a.num_rows;
    const T* src = real ? x + token * a.x_stride + k_begin + word * 8 : x;
    cuda::cp_async16(xs + token * x_row + word * 8, src, real ? 16 : 0);
  }
  cuda::cp_async_commit();
  cuda::cp_async_wait<0>();
  __syncthreads();

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  const T* xs_lane = xs + g * x_row + 8 * t;
  for (int i = 0; i < num_groups; ++i) {
    if (i + 1 < num_groups) load_group(next, row_lo, row_hi, int64_t{i + 1} * kDecodeLinearGroupK);
    mma_group<T, NT>(acc, cur, xs_lane + i * kDecodeLinearGroupK, x_row);
    cur = next;
  }

  // The CTA's partial products -> partial [NT * 8][kPartialRow] (reusing the x tile's memory).
  __syncthreads();
  float* partial = reinterpret_cast<float*>(smem);
  const int col = warp * 16 + g;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int token = j * 8 + 2 * t;
    partial[token * kPartialRow + col] = acc[j][0];
    partial[(token + 1) * kPartialRow + col] = acc[j][1];
    partial[token * kPartialRow + col + 8] = acc[j][2];
    partial[(token + 1) * kPartialRow + col + 8] = acc[j][3];
  }
  cluster.sync();  // every slice's partial tile is complete and visible to the cluster

  // CTA `slice` finishes its share of the tile's [num_rows][64] outputs, 4 at a time: the sum of
  // the slices' partials in slice order (the same order for every row count), plus the bias.
  const int units = static_cast<int>(a.num_rows) * (kDecodeLinearRowsPerCta / 4);
  const int unit_end = (slice + 1) * units / slices;
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  for (int u = slice * units / slices + threadIdx.x; u < unit_end; u += kThreads) {
    const int token = u / (kDecodeLinearRowsPerCta / 4), c = (u % (kDecodeLinearRowsPerCta / 4)) * 4;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s = 0; s < slices; ++s) {
      const float4 v = *reinterpret_cast<const float4*>(cluster.map_shared_rank(partial, s) + token * kPartialRow + c);
      sum[0] += v.x;
      sum[1] += v.y;
      sum[2] += v.z;
      sum[3] += v.w;
    }
    if (bias != nullptr) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sum[e] += cuda::to_float(bias[row0 + c + e]);
    }
    cuda::store_vec<T, 4>(out + token * a.out_stride + row0 + c, sum);
  }
  cluster.sync();  // the other slices may still be reading this CTA's partial tile
#else
  __trap();  // decode_linear_available() keeps launches off devices without sm_90 code
#endif
}

template <typename T, int NT>
void launch(const DecodeLinearArgs& a, const DecodeLinearPlan& p) {
  auto kernel = decode_linear_kernel<T, NT>;
  // Opt in to more than 48 KB of dynamic shared memory, once per instantiation.
  static std::once_flag opted_in;
  std::call_once(opted_in, [&] {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(kDecodeLinearMaxSmemBytes));
  });
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(p.slices), static_cast<unsigned>(p.row_tiles), 1);
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.dynamicSmemBytes = static_cast<size_t>(p.smem_bytes);
  cfg.stream = cuda::as_stream(a.stream);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(p.slices);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, a, p.groups);
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("decode_linear: launch failed: ") + cudaGetErrorString(err));
  }
}

template <typename T>
void dispatch_token_tiles(const DecodeLinearArgs& a, const DecodeLinearPlan& p) {
  switch (p.token_tiles) {
    case 1: return launch<T, 1>(a, p);
    case 2: return launch<T, 2>(a, p);
    case 4: return launch<T, 4>(a, p);
    case 6: return launch<T, 6>(a, p);
    case 8: return launch<T, 8>(a, p);
    case 12: return launch<T, 12>(a, p);
    case 16: return launch<T, 16>(a, p);
    default: throw std::logic_error("decode_linear: no kernel for " + std::to_string(p.token_tiles) + " token tiles");
  }
}

struct DeviceInfo {
  bool available = false;
  int num_sms = 0;
};

DeviceInfo device_info(int device) {
  constexpr int kMaxDevices = 64;
  static DeviceInfo cache[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) throw std::invalid_argument("decode_linear: bad device index");
  std::call_once(once[device], [device] {
    DeviceInfo info;
    int major = 0;
    cudaFuncAttributes fa{};
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&info.num_sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess &&
        cudaFuncGetAttributes(&fa, decode_linear_kernel<__nv_bfloat16, 1>) == cudaSuccess) {
      // ptxVersion: the virtual arch the loaded code was compiled from (the sm_90 body needs 90+).
      info.available = major >= 9 && fa.ptxVersion >= 90;
    }
    cudaGetLastError();  // a failed query leaves the kernel unavailable, not a sticky error
    cache[device] = info;
  });
  return cache[device];
}

}  // namespace

bool decode_linear_available(int device) { return device_info(device).available; }

void decode_linear_cuda(const DecodeLinearArgs& a) {
  const DeviceInfo info = device_info(a.device);
  if (!info.available) throw std::runtime_error("decode_linear: needs an sm_90+ device and a build with sm_90");
  const DecodeLinearPlan p = decode_linear_plan(a.num_rows, a.out_features, a.in_features, info.num_sms);
  if (!p.supported) throw std::invalid_argument("decode_linear: " + p.why_not);
  if (a.dtype == DType::kBFloat16) {
    dispatch_token_tiles<__nv_bfloat16>(a, p);
  } else if (a.dtype == DType::kFloat16) {
    dispatch_token_tiles<__half>(a, p);
  } else {
    throw std::invalid_argument("decode_linear: float16 or bfloat16 only");
  }
}

}  // namespace pagedllm::kernels
