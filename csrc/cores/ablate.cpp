// The ablate core (antipasto_ablate; docs/SPEC.md §3) on the host: h = p S - C ((p S C) * coeff a), C (r, k)
// orthonormal, a = clamp(alpha, 0, 1). params [C, a], no option; dparams dC (r k) | da (k). The CPU kernels use C
// transposed (k, r), so every product is a fixed-lane dot product or an axpy over r (both vectorise).
#include "csrc/cores/core_host.h"
#include "csrc/cpu/rows.h"

namespace ax {
namespace {

void pack(Packer& p, int64_t option) {
  p.count(2, "C, a");
  TORCH_CHECK(option == 0, "antipasto_ext: the ablate core has no option, got ", option);
  CoreParams& c = p.params();
  const at::Tensor& C = p.raw(0);
  const int64_t r = p.r(), k = C.dim() == 2 ? C.size(1) : 0;
  TORCH_CHECK(k >= 1, "antipasto_ext: C must have shape (r, k) with k >= 1 and r = ", r, ", got ", C.sizes());
  c.k = k;
  c.A = p.param(0, "C", {r, k});
  c.a = p.param(1, "a", {k});
}

// h0 = p S; v = Ct h0; h = h0 - Ct^T (coeff a v).  `v` is k scratch.
template <typename acc_t>
void row_forward(const acc_t* p, const acc_t* S, const acc_t* Ct, const acc_t* a, acc_t coeff, int64_t r, int64_t k,
                 acc_t* v, acc_t* h) {
  for (int64_t j = 0; j < r; ++j) h[j] = p[j] * S[j];
  for (int64_t m = 0; m < k; ++m) v[m] = cpu::dot(h, Ct + m * r, r);
  for (int64_t m = 0; m < k; ++m) cpu::axpy(-coeff * a[m] * v[m], Ct + m * r, r, h);
}
// With w = coeff a v and dw = -Ct dh: da += coeff v dw; dv = coeff a dw; dCt += dv h0^T - w dh^T;
// dp = (dh + Ct^T dv) * S.  `h0` is r scratch.
template <typename acc_t>
void row_backward(const acc_t* dh, const acc_t* p, const acc_t* S, const acc_t* Ct, const acc_t* a, acc_t coeff,
                  int64_t r, int64_t k, acc_t* h0, acc_t* dp, acc_t* dCt, acc_t* da) {
  for (int64_t j = 0; j < r; ++j) {
    h0[j] = p[j] * S[j];
    dp[j] = dh[j];
  }
  for (int64_t m = 0; m < k; ++m) {
    const acc_t* c = Ct + m * r;
    const acc_t v = cpu::dot(h0, c, r), dw = -cpu::dot(dh, c, r);
    const acc_t dv = coeff * a[m] * dw;
    da[m] += coeff * v * dw;
    cpu::axpy(dv, h0, r, dCt + m * r);
    cpu::axpy(-coeff * a[m] * v, dh, r, dCt + m * r);
    cpu::axpy(dv, c, r, dp);
  }
  for (int64_t j = 0; j < r; ++j) dp[j] *= S[j];
}

void forward(const CoreCall& call) {
  cpu::dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = cpu::acc_of<T>;
    const CoreParams& c = call.core;
    const int64_t r = c.r, k = c.k;
    const T* x = static_cast<const T*>(call.p);
    T* h = static_cast<T*>(call.h);
    const acc_t *S = static_cast<const acc_t*>(c.S), *a = static_cast<const acc_t*>(c.a);
    const std::vector<acc_t> Ct = cpu::transposed(static_cast<const acc_t*>(c.A), r, k);
    cpu::for_rows<acc_t>(call.n, 2 * r * k + r, 2 * r + k, [&](int64_t i, acc_t* w) {
      cpu::load_row(x + i * r, r, w);
      row_forward(w, S, Ct.data(), a, acc_t(c.coeff), r, k, w + 2 * r, w + r);
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
    const acc_t *S = static_cast<const acc_t*>(c.S), *a = static_cast<const acc_t*>(c.a);
    const std::vector<acc_t> Ct = cpu::transposed(static_cast<const acc_t*>(c.A), r, k);
    // partial layout: dC^T (k r) | da (k)
    std::vector<acc_t> all(static_cast<size_t>(r * k + k));
    cpu::reduce_rows<acc_t>(call.n, 6 * r * k + 2 * r, r * k + k, 4 * r, all.data(),
                            [&](int64_t i, acc_t* w, acc_t* part) {
                              cpu::load_row(x + i * r, r, w);
                              cpu::load_row(dy + i * r, r, w + r);
                              row_backward(w + r, w, S, Ct.data(), a, acc_t(c.coeff), r, k, w + 3 * r, w + 2 * r,
                                           part, part + r * k);
                              cpu::store_row(w + 2 * r, r, dp + i * r);
                            });
    for (int64_t j = 0; j < r; ++j)
      for (int64_t m = 0; m < k; ++m) tot[j * k + m] = all[m * r + j];
    std::copy(all.begin() + r * k, all.end(), tot + r * k);
  });
}

AX_REGISTER_CORE(Core::ablate, "ablate", &pack, &forward, &backward);

}  // namespace
}  // namespace ax
