// The C++ CPU kernel set (ax::cpu_impl): the kernel API of csrc/kernels/api.h on host memory. The cores' kernels
// are in their host files (csrc/cores/<core>.cpp, found through core_host), which take one steering group; a
// steered call runs them group by group (in parallel within each group) and combines the groups' parameter
// gradients in api.h's order. The block Cayley kernels are here, on the per-block math of csrc/kernels/math.h
// (which the CUDA kernels mirror).
#include <algorithm>
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
acc_t block_coeff(const CayleyCall& c, int64_t b) {
  return c.coeffs ? static_cast<const acc_t*>(c.coeffs)[b / c.blocks_per_coeff] : acc_t(c.coeff);
}

// The adapter of group e in a bank (0 without one), clamped as the CUDA kernels clamp it.
int64_t group_adapter(const CoreParams& k, int64_t e) {
  return k.adapters ? clamp_adapter_index(k.adapters[e], k.n_adapters) : 0;
}

// Group e of a steered call as an unsteered call over its rows, at its coefficient (its rotation set, its adapter).
template <typename acc_t>
CoreCall group_call(const CoreCall& c, int64_t e, int64_t rows) {
  const int64_t width = c.dtype == DType::f64 ? 8 : c.dtype == DType::f32 ? 4 : 2;
  const int64_t offset = e * rows * c.core.r * width;
  auto in = [&](const void* ptr) { return ptr ? static_cast<const void*>(static_cast<const char*>(ptr) + offset) : ptr; };
  auto out = [&](void* ptr) { return ptr ? static_cast<void*>(static_cast<char*>(ptr) + offset) : ptr; };
  CoreCall g = c;
  g.n = rows;
  g.p = in(c.p);
  g.grad_h = in(c.grad_h);
  g.h = out(c.h);
  g.dp = out(c.dp);
  const CoreParams& k = c.core;
  g.core.entries = 1;
  g.core.coeffs = nullptr;
  g.core.adapters = nullptr;
  g.core.n_adapters = 1;
  g.core.coeff = static_cast<const acc_t*>(k.coeffs)[e];
  if (rot_per_entry(k)) g.core.R = static_cast<const acc_t*>(k.R) + e * k.r * k.bs;
  const int64_t ad = group_adapter(k, e);
  auto shift = [&](const void* ptr, int64_t stride) {
    return ptr ? static_cast<const void*>(static_cast<const acc_t*>(ptr) + ad * stride) : ptr;
  };
  g.core.g = shift(k.g, bank_stride_g(k));
  g.core.A = shift(k.A, bank_stride_AB(k));
  g.core.B = shift(k.B, bank_stride_AB(k));
  g.core.a = shift(k.a, bank_stride_a(k));
  return g;
}

template <typename acc_t>
void steered_backward(const CoreCall& c, const CoreHost& host) {
  const CoreParams& k = c.core;
  const int64_t rows = core_entry_rows(c.n, k), n_part = core_partials(k), n_entry = core_entry_partials(k);
  const int64_t n_shared = n_part - n_entry;
  acc_t* out = static_cast<acc_t*>(c.dparams);
  std::fill(out, out + k.n_adapters * n_shared, acc_t(0));
  std::vector<bool> seen(static_cast<size_t>(k.n_adapters), false);
  std::vector<acc_t> part(static_cast<size_t>(n_part));
  for (int64_t e = 0; e < k.entries; ++e) {
    CoreCall g = group_call<acc_t>(c, e, rows);
    g.dparams = part.data();
    host.cpu_backward(g);
    const int64_t ad = group_adapter(k, e);
    acc_t* dst = out + ad * n_shared;
    for (int64_t j = 0; j < n_shared; ++j) dst[j] = seen[ad] ? dst[j] + part[j] : part[j];
    seen[ad] = true;
    std::copy(part.begin() + n_shared, part.end(), out + k.n_adapters * n_shared + e * n_entry);
  }
}

template <typename acc_t>
void cayley_forward_typed(const CayleyCall& c) {
  const int64_t n = c.n_blocks, bs = c.bs, m = bs * (bs - 1) / 2;
  const acc_t* t = static_cast<const acc_t*>(c.t);
  acc_t* R = static_cast<acc_t*>(c.R);
  with_block_size(bs, [&](auto BS) {
    at::parallel_for(0, n, grain(4 * bs * bs * bs), [&](int64_t b0, int64_t b1) {
      std::vector<acc_t> work(static_cast<size_t>(2 * bs * bs));
      for (int64_t b = b0; b < b1; ++b)
        cayley_block_forward(t + b * m, int(BS), acc_t(c.a_lim), block_coeff<acc_t>(c, b), work.data(), R + b * bs * bs);
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
        cayley_block_backward(G + b * bs * bs, R + b * bs * bs, t + b * m, int(BS), acc_t(c.a_lim), block_coeff<acc_t>(c, b),
                              work.data(), dt + b * m);
    });
  });
}

void check_groups(const CoreCall& c) {
  const CoreParams& k = c.core;
  if (!steering_fits(c.n, k))
    throw std::invalid_argument("antipasto_ext core: " + std::to_string(c.n) + " rows do not split into " +
                                std::to_string(k.entries) + " steering groups");
  if (!bank_fits(k))
    throw std::invalid_argument("antipasto_ext core: a bank of " + std::to_string(k.n_adapters) +
                                " adapters needs one adapter index and coefficient per steering group");
}

void check_cayley(const char* op, const CayleyCall& c) {
  if (c.bs < 2 || c.bs > kMaxCayleyBlock)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": block size " + std::to_string(c.bs) +
                                " not in 2.." + std::to_string(kMaxCayleyBlock));
}

}  // namespace

const char* kernel_set_name() { return "native"; }

void core_forward(const CoreCall& c, void*) {
  const CoreHost& host = core_host(c.core.core);
  check_groups(c);
  if (c.core.coeffs == nullptr) return host.cpu_forward(c);
  const int64_t rows = core_entry_rows(c.n, c.core);
  for (int64_t e = 0; e < c.core.entries; ++e)
    host.cpu_forward(c.dtype == DType::f64 ? group_call<double>(c, e, rows) : group_call<float>(c, e, rows));
}

void core_backward(const CoreCall& c, void*) {
  const CoreHost& host = core_host(c.core.core);
  check_groups(c);
  if (c.core.coeffs == nullptr) return host.cpu_backward(c);
  c.dtype == DType::f64 ? steered_backward<double>(c, host) : steered_backward<float>(c, host);
}

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
