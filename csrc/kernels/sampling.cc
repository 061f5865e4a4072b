// CPU twin of exponential_race_sample: the same Philox draws and float math as the CUDA kernel,
// row by row.
#include "kernels/sampling.h"

#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/cpu_dtype.h"
#include "kernels/philox.h"

namespace pagedllm::kernels {

void exponential_race_sample_cpu(const ExponentialRaceArgs& a) {
  cpu::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const auto k0 = static_cast<uint32_t>(a.seed), k1 = static_cast<uint32_t>(a.seed >> 32);
    for (int64_t r = 0; r < a.num_rows; ++r) {
      const T* x = static_cast<const T*>(a.logits) + r * a.logits_stride;
      const bool greedy = a.greedy[r] != 0;
      const float inv_t = a.inv_temperature[r];
      // NaN scores never win; a row of -inf gives token 0 (torch.argmax's answer too).
      float best = -std::numeric_limits<float>::infinity();
      int64_t best_i = 0;
      for (int64_t i0 = 0; i0 < a.vocab; i0 += 4) {
        Philox4 bits{};
        if (!greedy) {
          bits = philox4x32_10(Philox4{{static_cast<uint32_t>(i0 / 4), static_cast<uint32_t>(r),
                                        static_cast<uint32_t>(a.step),
                                        static_cast<uint32_t>(a.step >> 32)}},
                               k0, k1);
        }
        for (int e = 0; e < 4 && i0 + e < a.vocab; ++e) {
          const float l = cpu::to_float(x[i0 + e]);
          const float s = greedy ? l : l * inv_t - std::log(-std::log(unit_open(bits.v[e])));
          if (s > best) {  // strict: ties keep the smaller index
            best = s;
            best_i = i0 + e;
          }
        }
      }
      a.out[r] = best_i;
    }
  });
}

}  // namespace pagedllm::kernels
