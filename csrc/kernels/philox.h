// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator, so any element's random bits are a pure function of (key, counter)
// and the CPU twin and the CUDA kernel draw exactly the same numbers in any order.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PAGEDLLM_HD __host__ __device__ __forceinline__
#else
#define PAGEDLLM_HD inline
#endif

namespace pagedllm::kernels {

struct Philox4 {
  uint32_t v[4];
};

PAGEDLLM_HD void mul_hi_lo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// Ten rounds; the key is bumped by the Weyl constants between rounds.
PAGEDLLM_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mul_hi_lo(0xD2511F53u, c.v[0], &hi0, &lo0);
    mul_hi_lo(0xCD9E8D57u, c.v[2], &hi1, &lo1);
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// 23 random bits -> u = (k + 1/2) / 2^23 in [2^-24, 1 - 2^-24], exact in float: never 0 or 1, so
// -log(-log(u)) is finite (at most 24 ln 2 = 16.64). 23 bits, not 24: k + 1/2 then needs 24
// significant bits, which a float has; with 24-bit k it rounded to even for k >= 2^23, and k =
// 2^24 - 1 gave u = 1.0, i.e. +inf noise once per 2^24 draws (~0.9% of rows of a 151,936-token
// vocabulary sampled a token of any probability; tests/kernels/test_sampling_kernel.py).
PAGEDLLM_HD float unit_open(uint32_t bits) {
  return (static_cast<float>(bits >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

}  // namespace pagedllm::kernels
