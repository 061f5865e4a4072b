// CPU twins of rms_norm and fused_add_rms_norm (with or without split-K partials): two passes
// per row over a float copy.
#include "kernels/rms_norm.h"

#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu_dtype.h"

namespace pagedllm::kernels {
namespace {

template <typename T>
void normalize_row(const float* xf /* [hidden] */, const T* w /* [hidden] */, T* out, int hidden,
                   float eps) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 partial sums: lets the compiler vectorize
  int i = 0;
  for (; i + 8 <= hidden; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += xf[i + j] * xf[i + j];
  float sumsq = 0.0f;
  for (; i < hidden; ++i) sumsq += xf[i] * xf[i];
  for (int j = 0; j < 8; ++j) sumsq += acc[j];
  const float inv = 1.0f / std::sqrt(sumsq / static_cast<float>(hidden) + eps);
  for (int k = 0; k < hidden; ++k) out[k] = cpu::from_float<T>((xf[k] * inv) * cpu::to_float(w[k]));
}

// The split-K GEMM's output element (r, k): its partials summed in order, rounded to T.
template <typename T>
float summed_partials(const FusedAddRmsNormArgs& a, int64_t r, int k) {
  const int64_t plane = a.num_rows * a.hidden;
  float sum = 0.0f;
  for (int s = 0; s < a.num_partials; ++s) sum += a.partials[s * plane + r * a.hidden + k];
  return cpu::to_float(cpu::from_float<T>(sum));
}

}  // namespace

void rms_norm_cpu(const RmsNormArgs& a) {
  cpu::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    std::vector<float> xf(a.hidden);  // [hidden] float copy of one row
    const T* x = static_cast<const T*>(a.x);
    const T* w = static_cast<const T*>(a.weight);
    T* out = static_cast<T*>(a.out);
    for (int64_t r = 0; r < a.num_rows; ++r) {
      const T* xr = x + r * a.x_stride;
      for (int k = 0; k < a.hidden; ++k) xf[k] = cpu::to_float(xr[k]);
      normalize_row(xf.data(), w, out + r * a.out_stride, a.hidden, a.eps);
    }
  });
}

void fused_add_rms_norm_cpu(const FusedAddRmsNormArgs& a) {
  cpu::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    std::vector<float> sf(a.hidden);  // [hidden] the rounded sum, as float
    T* x = static_cast<T*>(a.x);
    T* res = static_cast<T*>(a.residual);
    const T* w = static_cast<const T*>(a.weight);
    for (int64_t r = 0; r < a.num_rows; ++r) {
      T* xr = x + r * a.x_stride;
      T* rr = res + r * a.residual_stride;
      for (int k = 0; k < a.hidden; ++k) {
        const float added = a.partials == nullptr ? cpu::to_float(xr[k]) : summed_partials<T>(a, r, k);
        const T s = cpu::from_float<T>(added + cpu::to_float(rr[k]));
        rr[k] = s;
        sf[k] = cpu::to_float(s);
      }
      normalize_row(sf.data(), w, xr, a.hidden, a.eps);
    }
  });
}

}  // namespace pagedllm::kernels
