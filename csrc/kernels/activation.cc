// CPU twin of silu_and_mul.
#include <cmath>
#include <type_traits>

#include "kernels/activation.h"
#include "kernels/cpu_dtype.h"

namespace pagedllm::kernels {

void silu_and_mul_cpu(const SiluAndMulArgs& a) {
  cpu::dispatch_float_type(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* x = static_cast<const T*>(a.x);
    T* out = static_cast<T*>(a.out);
    for (int64_t r = 0; r < a.num_rows; ++r) {
      const T* gate = x + r * 2 * a.d;
      const T* up = gate + a.d;
      T* o = out + r * a.d;
      for (int64_t i = 0; i < a.d; ++i) {
        const float g = cpu::to_float(gate[i]);
        o[i] = cpu::from_float<T>(g / (1.0f + std::exp(-g)) * cpu::to_float(up[i]));
      }
    }
  });
}

}  // namespace pagedllm::kernels
