// decode_linear_plan: how decode_linear cuts a call into clusters of K slices (decode_linear.h).
#include <algorithm>

#include "kernels/decode_linear.h"

namespace pagedllm::kernels {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Shared memory of a CTA: its x slice, [tokens][slice K + 32 pad] of 2-byte elements (the pad
// puts tokens g and g+1 64 bytes apart in the banks, so a quarter warp's 16-byte B-operand loads
// do not conflict). The partial-product tile [tokens][64 + 4] floats that reuses it is smaller.
int64_t smem_bytes_for(int token_tiles, int groups_per_slice) {
  return int64_t{token_tiles} * 8 * (groups_per_slice * kDecodeLinearGroupK + 32) * 2;
}

// Column-tile counts the kernel is instantiated for (decode_linear.cu): rows round up to one.
int token_tiles_for(int64_t num_rows) {
  const int needed = static_cast<int>(ceil_div(num_rows, 8));
  for (int nt : {1, 2, 4, 6, 8, 12, 16}) {
    if (nt >= needed) return nt;
  }
  return -1;
}

}  // namespace

DecodeLinearPlan decode_linear_plan(int64_t num_rows, int64_t out_features, int64_t in_features, int num_sms) {
  DecodeLinearPlan p;
  auto refuse = [&](std::string why) {
    p.why_not = std::move(why);
    return p;
  };
  if (num_rows < 1 || num_rows > kDecodeLinearMaxRows) {
    return refuse("num_rows must be in [1, " + std::to_string(kDecodeLinearMaxRows) + "], got " +
                  std::to_string(num_rows));
  }
  if (out_features <= 0 || out_features % kDecodeLinearRowsPerCta) {
    return refuse("out_features must be a positive multiple of " + std::to_string(kDecodeLinearRowsPerCta) +
                  ", got " + std::to_string(out_features));
  }
  if (in_features <= 0 || in_features % kDecodeLinearGroupK) {
    return refuse("in_features must be a positive multiple of " + std::to_string(kDecodeLinearGroupK) +
                  ", got " + std::to_string(in_features));
  }
  if (num_sms <= 0) return refuse("num_sms must be positive");
  const int64_t row_tiles = out_features / kDecodeLinearRowsPerCta;
  if (row_tiles > 65535) return refuse("out_features too large for the grid");
  p.row_tiles = static_cast<int>(row_tiles);
  p.groups = static_cast<int>(in_features / kDecodeLinearGroupK);
  // Enough CTAs for about two per SM (each keeps 4 warps x 8 KB of weights in flight; 5% short
  // is enough), in as few slices as give that: every extra slice re-reads x and adds a partial
  // tile to the cluster's sum.
  const int max_slices = std::min(kDecodeLinearMaxSlices, p.groups);
  const int64_t wanted_ctas = (2 * int64_t{num_sms} * 95 + 99) / 100;
  int slices = static_cast<int>(std::clamp<int64_t>(ceil_div(wanted_ctas, row_tiles), 1, max_slices));
  // The x slice must fit at the widest row count, so the slicing does not depend on num_rows.
  const int widest = token_tiles_for(kDecodeLinearMaxRows);
  auto fits = [&](int s) {
    return smem_bytes_for(widest, static_cast<int>(ceil_div(p.groups, s))) <= kDecodeLinearMaxSmemBytes;
  };
  while (slices < max_slices && !fits(slices)) ++slices;
  if (!fits(slices)) {
    return refuse("in_features " + std::to_string(in_features) + " needs more than " +
                  std::to_string(kDecodeLinearMaxSlices) + " K slices of shared memory");
  }
  // Equal slices where a few more give them: the cluster waits for its longest slice.
  for (int s = slices; s <= max_slices; ++s) {
    if (p.groups % s == 0) {
      slices = s;
      break;
    }
  }
  p.slices = slices;
  p.token_tiles = token_tiles_for(num_rows);
  p.smem_bytes = smem_bytes_for(p.token_tiles, static_cast<int>(ceil_div(p.groups, slices)));
  p.supported = true;
  return p;
}

}  // namespace pagedllm::kernels
