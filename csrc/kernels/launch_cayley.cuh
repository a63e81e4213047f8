// Host launchers of the block Cayley kernels (csrc/kernels/cayley.cuh): cayley_forward and cayley_backward of
// the kernel API (csrc/kernels/api.h) in namespace ax::AX_KERNEL_NS. Include once per kernel set. Torch-free.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "csrc/kernels/api.h"
#include "csrc/kernels/cayley.cuh"
#include "csrc/kernels/launch_common.cuh"

namespace ax {
namespace AX_KERNEL_NS {

namespace kern {
inline void check_cayley(const char* op, const CayleyCall& c) {
  if (c.bs < 2 || c.bs > kMaxCayleyBlock)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": block size " + std::to_string(c.bs) +
                                " not in 2.." + std::to_string(kMaxCayleyBlock));
  if (c.coeffs && c.blocks_per_coeff < 1)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": blocks_per_coeff must be positive");
}
template <typename acc_t>
BlockCoeff<acc_t> block_coeff(const CayleyCall& c) {
  return BlockCoeff<acc_t>{static_cast<const acc_t*>(c.coeffs), c.blocks_per_coeff, acc_t(c.coeff)};
}
}  // namespace kern

void cayley_forward(const CayleyCall& c, void* stream) {
  kern::check_cayley("block_cayley", c);
  const int64_t n_R = c.n_blocks * c.bs * c.bs;
  if (c.f64) {
    kern::poison<double>(c.R, n_R);
    kern::launch_cayley_forward<double>(static_cast<const double*>(c.t), c.n_blocks, int(c.bs), c.a_lim, kern::block_coeff<double>(c),
                                        static_cast<double*>(c.R), kern::as_stream(stream));
  } else {
    kern::poison<float>(c.R, n_R);
    kern::launch_cayley_forward<float>(static_cast<const float*>(c.t), c.n_blocks, int(c.bs), float(c.a_lim),
                                       kern::block_coeff<float>(c), static_cast<float*>(c.R), kern::as_stream(stream));
  }
}

void cayley_backward(const CayleyCall& c, void* stream) {
  kern::check_cayley("block_cayley_backward", c);
  const int64_t n_dt = c.n_blocks * (c.bs * (c.bs - 1) / 2);
  if (c.f64) {
    kern::poison<double>(c.dt, n_dt);
    kern::launch_cayley_backward<double>(static_cast<const double*>(c.grad_R), static_cast<const double*>(c.R),
                                         static_cast<const double*>(c.t), c.n_blocks, int(c.bs), c.a_lim, kern::block_coeff<double>(c),
                                         static_cast<double*>(c.dt), kern::as_stream(stream));
  } else {
    kern::poison<float>(c.dt, n_dt);
    kern::launch_cayley_backward<float>(static_cast<const float*>(c.grad_R), static_cast<const float*>(c.R),
                                        static_cast<const float*>(c.t), c.n_blocks, int(c.bs), float(c.a_lim),
                                        kern::block_coeff<float>(c), static_cast<float*>(c.dt), kern::as_stream(stream));
  }
}

}  // namespace AX_KERNEL_NS
}  // namespace ax
