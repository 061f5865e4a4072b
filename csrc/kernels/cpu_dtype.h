// Scalar float16 / bfloat16 <-> float32 conversion for the CPU twins (no compiler extensions).
// Rounding matches torch: round to nearest even; NaN stays NaN.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/kernel_args.h"

namespace pagedllm::kernels::cpu {

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float to_float(float x) { return x; }
inline float to_float(BFloat16 x) { return bits_float(static_cast<uint32_t>(x.bits) << 16); }
inline float to_float(Half x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1fu;
  uint32_t mant = x.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // Subnormal: value = mant * 2^-24.
    float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

template <typename T> inline T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline BFloat16 from_float<BFloat16>(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}
template <> inline Half from_float<Half>(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return Half{static_cast<uint16_t>(sign | 0x7e00u)};        // nan
  if (a >= 0x477ff000u) return Half{static_cast<uint16_t>(sign | 0x7c00u)};       // overflow -> inf
  if (a < 0x38800000u) {
    // Result is subnormal (or zero): scale so that one half ulp is integer-rounded by the FPU.
    const float v = bits_float(a) * 16777216.0f;  // value in units of 2^-24
    const float r = v + 12582912.0f - 12582912.0f;  // round to nearest even integer
    return Half{static_cast<uint16_t>(sign | static_cast<uint16_t>(r))};
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
  uint32_t h = ((a >> 13) - (112u << 10));
  const uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return Half{static_cast<uint16_t>(sign | h)};
}

// Calls fn with a typed null pointer of the storage type for `dtype` (float, Half, BFloat16).
template <typename Fn>
inline void dispatch_float_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(static_cast<float*>(nullptr)); break;
    case DType::kFloat16: fn(static_cast<Half*>(nullptr)); break;
    case DType::kBFloat16: fn(static_cast<BFloat16*>(nullptr)); break;
    default: break;
  }
}

}  // namespace pagedllm::kernels::cpu
