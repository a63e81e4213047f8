// The dplr core (antipasto_dplr; docs/SPEC.md §5) on the host: h = p * s + coeff (p A^T) B^T, s the gain.
// params [g, A (k, r), B (r, k)], option suppress_only; dparams dg (r) | dA (k r) | dB (r k). The CPU kernels use
// B transposed (k, r), so every product is a fixed-lane dot product or an axpy over r (both vectorise).
#include "csrc/cores/core_host.h"
#include "csrc/cpu/rows.h"

namespace ax {
namespace {

void pack(Packer& p, int64_t option) {
  p.count(3, "g, A, B");
  CoreParams& c = p.params();
  const at::Tensor& A = p.raw(1);
  const int64_t r = p.r(), k = A.dim() == 2 ? A.size(0) : 0;
  TORCH_CHECK(k >= 1, "antipasto_ext: A must have shape (k, r) with k >= 1 and r = ", r, ", got ", A.sizes());
  c.suppress_only = option != 0;
  c.k = k;
  c.g = p.param(0, "g", {r});
  c.A = p.param(1, "A", {k, r});
  c.B = p.param(2, "B", {r, k});
}

// t = A p; h = p * s + coeff Bt^T t.
template <typename acc_t>
void row_forward(const acc_t* p, const acc_t* s, const acc_t* A, const acc_t* Bt, acc_t coeff, int64_t r, int64_t k,
                 acc_t* h) {
  for (int64_t j = 0; j < r; ++j) h[j] = p[j] * s[j];
  for (int64_t m = 0; m < k; ++m) cpu::axpy(coeff * cpu::dot(p, A + m * r, r), Bt + m * r, r, h);
}
// u = coeff Bt dh; dp = dh * s + A^T u; ds += dh * p; dA += u p^T; dBt += coeff t dh^T.
template <typename acc_t>
void row_backward(const acc_t* dh, const acc_t* p, const acc_t* s, const acc_t* A, const acc_t* Bt, acc_t coeff,
                  int64_t r, int64_t k, acc_t* dp, acc_t* ds, acc_t* dA, acc_t* dBt) {
  for (int64_t j = 0; j < r; ++j) {
    dp[j] = dh[j] * s[j];
    ds[j] += dh[j] * p[j];
  }
  for (int64_t m = 0; m < k; ++m) {
    const acc_t t = cpu::dot(p, A + m * r, r), u = coeff * cpu::dot(dh, Bt + m * r, r);
    cpu::axpy(u, A + m * r, r, dp);
    cpu::axpy(u, p, r, dA + m * r);
    cpu::axpy(coeff * t, dh, r, dBt + m * r);
  }
}

void forward(const CoreCall& call) {
  cpu::dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = cpu::acc_of<T>;
    const CoreParams& c = call.core;
    const int64_t r = c.r, k = c.k;
    const T* x = static_cast<const T*>(call.p);
    T* h = static_cast<T*>(call.h);
    const std::vector<acc_t> s = cpu::gain_scales<acc_t>(c, nullptr);
    const acc_t* A = static_cast<const acc_t*>(c.A);
    const std::vector<acc_t> Bt = cpu::transposed(static_cast<const acc_t*>(c.B), r, k);
    cpu::for_rows<acc_t>(call.n, 2 * r * k + r, 2 * r, [&](int64_t i, acc_t* w) {
      cpu::load_row(x + i * r, r, w);
      row_forward(w, s.data(), A, Bt.data(), acc_t(c.coeff), r, k, w + r);
      cpu::store_row(w + r, r, h + i * r);
    });
  });
}

void backward(const CoreCall& call) {
  cpu::dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = cpu::acc_of<T>;
    const CoreParams& c = call.core;
    const int64_t r = c.r, k = c.k;
    const T *x = static_cast<const T*>(call.p), *dy = static_cast<const T*>(call.grad_h);
    T* dp = static_cast<T*>(call.dp);
    acc_t* tot = static_cast<acc_t*>(call.dparams);
    std::vector<acc_t> dscale;
    const std::vector<acc_t> s = cpu::gain_scales<acc_t>(c, &dscale);
    const acc_t* A = static_cast<const acc_t*>(c.A);
    const std::vector<acc_t> Bt = cpu::transposed(static_cast<const acc_t*>(c.B), r, k);
    // partial layout: ds (r) | dA (k r) | dB^T (k r)
    std::vector<acc_t> all(static_cast<size_t>(r + 2 * k * r));
    cpu::reduce_rows<acc_t>(call.n, 5 * r * k + 2 * r, r + 2 * k * r, 3 * r, all.data(),
                            [&](int64_t i, acc_t* w, acc_t* part) {
                              cpu::load_row(x + i * r, r, w);
                              cpu::load_row(dy + i * r, r, w + r);
                              row_backward(w + r, w, s.data(), A, Bt.data(), acc_t(c.coeff), r, k, w + 2 * r, part,
                                           part + r, part + r + k * r);
                              cpu::store_row(w + 2 * r, r, dp + i * r);
                            });
    for (int64_t j = 0; j < r; ++j) tot[j] = all[j] * dscale[j];
    std::copy(all.begin() + r, all.begin() + r + k * r, tot + r);
    const acc_t* dBt = all.data() + r + k * r;
    for (int64_t j = 0; j < r; ++j)
      for (int64_t m = 0; m < k; ++m) tot[r + k * r + j * k + m] = dBt[m * r + j];
  });
}

AX_REGISTER_CORE(Core::dplr, "dplr", &pack, &forward, &backward);

}  // namespace
}  // namespace ax
