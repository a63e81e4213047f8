// The C++ CPU kernel set (ax::cpu_impl): the kernel API of csrc/kernels/api.h on host memory. The cores' kernels
// are in their host files (csrc/cores/<core>.cpp, found through core_host); the block Cayley kernels are here, on
// the per-block math of csrc/kernels/math.h (which the CUDA kernels mirror).
#include <vector>

#include "csrc/cores/core_host.h"
#include "csrc/cpu/rows.h"
#include "csrc/kernels/api.h"
#include "csrc/kernels/math.h"

namespace ax {
namespace cpu_impl {
namespace {

using cpu::grain;
using cpu::with_block_size;

template <typename acc_t>
void cayley_forward_typed(const CayleyCall& c) {
  const int64_t n = c.n_blocks, bs = c.bs, m = bs * (bs - 1) / 2;
  const acc_t* t = static_cast<const acc_t*>(c.t);
  acc_t* R = static_cast<acc_t*>(c.R);
  with_block_size(bs, [&](auto BS) {
    at::parallel_for(0, n, grain(4 * bs * bs * bs), [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> work(static_cast<size_t>(2 * bs * bs));
      for (int64_t b = b0; b < b1; ++b)
        cayley_block_forward(t + b * m, int(BS), acc_t(c.a_lim), acc_t(c.coeff), work.data(), R + b * bs * bs);
    });
  });
}

template <typename acc_t>
void cayley_backward_typed(const CayleyCall& c) {
  const int64_t n = c.n_blocks, bs = c.bs, m = bs * (bs - 1) / 2;
  const acc_t *t = static_cast<const acc_t*>(c.t), *R = static_cast<const acc_t*>(c.R);
  const acc_t* G = static_cast<const acc_t*>(c.grad_R);
  acc_t* dt = static_cast<acc_t*>(c.dt);
  with_block_size(bs, [&](auto BS) {
    at::parallel_for(0, n, grain(4 * bs * bs * bs), [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> work(static_cast<size_t>(3 * bs * bs));
      for (int64_t b = b0; b < b1; ++b)
        cayley_block_backward(G + b * bs * bs, R + b * bs * bs, t + b * m, int(BS), acc_t(c.a_lim), acc_t(c.coeff),
                              work.data(), dt + b * m);
    });
  });
}

void check_cayley(const char* op, const CayleyCall& c) {
  if (c.bs < 2 || c.bs > kMaxCayleyBlock)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": block size " + std::to_string(c.bs) +
                                " not in 2.." + std::to_string(kMaxCayleyBlock));
}

}  // namespace

const char* kernel_set_name() { return "native"; }

void core_forward(const CoreCall& c, void*) { core_host(c.core.core).cpu_forward(c); }

void core_backward(const CoreCall& c, void*) { core_host(c.core.core).cpu_backward(c); }

void cayley_forward(const CayleyCall& c, void*) {
  check_cayley("block_cayley", c);
  c.f64 ? cayley_forward_typed<double>(c) : cayley_forward_typed<float>(c);
}

void cayley_backward(const CayleyCall& c, void*) {
  check_cayley("block_cayley_backward", c);
  c.f64 ? cayley_backward_typed<double>(c) : cayley_backward_typed<float>(c);
}

}  // namespace cpu_impl
}  // namespace ax
