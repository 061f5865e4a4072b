// decode_linear: out = x W^T (+ bias) for the few rows (tokens) of a decode step.
//
// A decode step's linears are skinny: a handful of token rows against a weight read whole from
// memory, so their floor is weight bytes / read bandwidth. cuBLAS reaches 25-45% of it at 16-128
// rows (benchmarks/RESULTS.md): it tiles the token dimension it barely has and launches too few
// CTAs for a narrow output. This kernel streams every weight element exactly once, straight from
// global memory into the A operand of mma.m16n8k16 (weight rows are the mma's M, tokens its N),
// with the CTA's x slice in shared memory as the B operand.
//
// Work split (decode_linear_plan): a CTA owns 64 output features (4 warps x 16 rows) and one of
// `slices` slices of K; the slices of one row tile form a thread-block cluster (sm_90) that sums
// its partial products through distributed shared memory, in slice order. The slice count depends
// on N, K and the SM count only, never on the number of rows, so a row's result does not depend
// on the other rows of the batch (CUDA graphs padded to a captured size give the eager tokens).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/kernel_args.h"

namespace pagedllm::kernels {

constexpr int kDecodeLinearMaxRows = 128;       // tokens per call (16 mma column tiles)
constexpr int kDecodeLinearRowsPerCta = 64;     // output features per CTA: 4 warps x 16
constexpr int kDecodeLinearGroupK = 128;        // K per register group of a warp (4 x 32)
constexpr int kDecodeLinearMaxSlices = 8;       // the portable cluster size
constexpr int64_t kDecodeLinearMaxSmemBytes = 200 * 1024;  // x slice at 128 rows, per CTA

// How one call is cut; the same for every num_rows in 1..kDecodeLinearMaxRows except smem_bytes.
struct DecodeLinearPlan {
  bool supported = false;
  std::string why_not;     // when !supported
  int slices = 0;          // K slices = CTAs per cluster (grid.x)
  int row_tiles = 0;       // out_features / kDecodeLinearRowsPerCta (grid.y)
  int groups = 0;          // in_features / kDecodeLinearGroupK, spread over the slices
  int token_tiles = 0;     // 8-token mma column tiles the kernel is instantiated for (>= rows / 8)
  int64_t smem_bytes = 0;  // dynamic shared memory per CTA
};

// Host-only arithmetic (decode_linear_plan.cc): usable and testable without a GPU.
DecodeLinearPlan decode_linear_plan(int64_t num_rows, int64_t out_features, int64_t in_features, int num_sms);

#ifdef PAGEDLLM_WITH_CUDA
// Whether `device` can run the kernel: sm_90+ (clusters) and this build holds sm_90 code for it.
bool decode_linear_available(int device);
// Runs the plan for a.device; the caller (the binding) has checked shapes, strides, alignment
// and that the plan is supported.
void decode_linear_cuda(const DecodeLinearArgs& a);
#endif

}  // namespace pagedllm::kernels
