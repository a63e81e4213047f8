// The registered ops' device implementations (schemas in csrc/registration.cpp): one function per op, the same for
// the CPU and CUDA dispatch keys; each picks the kernel set for its tensors (with_kernel_set) and runs the glue.
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "csrc/cores.h"
#include "csrc/glue.h"
#include "csrc/kernel_sets.h"

namespace ax {
namespace {

using T = at::Tensor;
using OptT = c10::optional<T>;

T core(c10::string_view name, const T& p, const T& S, at::TensorList params, double coeff, int64_t option,
       const OptT& coeffs, const OptT& adapters) {
  const CoreInputs in{core_named(name), S, params, coeff, option, coeffs, adapters};
  return with_kernel_set(p.device(), [&](auto k) { return glue::core_forward<decltype(k)>(in, p); });
}

std::tuple<T, std::vector<T>> core_backward(c10::string_view name, const T& grad_h, const T& p, const T& S,
                                            at::TensorList params, double coeff, int64_t option, const OptT& coeffs,
                                            const OptT& adapters) {
  const CoreInputs in{core_named(name), S, params, coeff, option, coeffs, adapters};
  return with_kernel_set(p.device(), [&](auto k) { return glue::core_backward<decltype(k)>(in, grad_h, p); });
}

std::tuple<T, T> layer(c10::string_view name, const T& x, const T& W, const OptT& bias, const T& U, const T& Vh,
                       const T& S, at::TensorList params, double coeff, int64_t option, bool need_p,
                       const OptT& coeffs, const OptT& adapters) {
  const CoreInputs in{core_named(name), S, params, coeff, option, coeffs, adapters};
  return with_kernel_set(x.device(), [&](auto k) { return glue::layer<decltype(k)>(in, x, W, bias, U, Vh, need_p); });
}

T block_cayley(const T& rot_T, int64_t block_size, double max_angle, double coeff, const OptT& coeffs) {
  return with_kernel_set(rot_T.device(), [&](auto k) {
    return glue::block_cayley<decltype(k)>(rot_T, block_size, max_angle, coeff, coeffs);
  });
}

T block_cayley_backward(const T& grad_R, const T& R, const T& rot_T, int64_t block_size, double max_angle,
                        double coeff, const OptT& coeffs) {
  return with_kernel_set(rot_T.device(), [&](auto k) {
    return glue::block_cayley_backward<decltype(k)>(grad_R, R, rot_T, block_size, max_angle, coeff, coeffs);
  });
}

void register_impls(torch::Library& m) {
  m.impl("core", &core);
  m.impl("core_backward", &core_backward);
  m.impl("layer", &layer);
  m.impl("block_cayley", &block_cayley);
  m.impl("block_cayley_backward", &block_cayley_backward);
}

}  // namespace

TORCH_LIBRARY_IMPL(antipasto_ext, CPU, m) { register_impls(m); }
#if AX_WITH_CUDA
TORCH_LIBRARY_IMPL(antipasto_ext, CUDA, m) { register_impls(m); }
#endif

}  // namespace ax
