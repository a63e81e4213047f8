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
  const at::IntArrayRef C = p.shape(0);
  const int64_t r = p.r(), k = C.size() == 2 ? C[1] : 0;
  TORCH_CHECK(k >= 1, "antipasto_ext: C must have shape (r, k) with k >= 1 and r = ", r, ", got ", p.raw(0).sizes());
  c.k = k;
  c.A = p.param(0, "C", {r, k});
  c.a = p.param(1, "a", {k});
}

void forward(const CoreCall& call) {
  const CoreParams& c = call.core;
  const int64_t r = c.r, k = c.k;
  cpu::forward_rows(call, 2 * r * k + r, k, [&](auto acc) {
    using A = decltype(acc);
    // h0 = p S; v = Ct h0; h = h0 - Ct^T (coeff a v)
    return [=, S = static_cast<const A*>(c.S), a = static_cast<const A*>(c.a),
            Ct = cpu::transposed(static_cast<const A*>(c.A), r, k), coeff = A(c.coeff)](const A* p, A* h, A* v) {
      for (int64_t j = 0; j < r; ++j) h[j] = p[j] * S[j];
      for (int64_t m = 0; m < k; ++m) v[m] = cpu::dot(h, Ct.data() + m * r, r);
      for (int64_t m = 0; m < k; ++m) cpu::axpy(-coeff * a[m] * v[m], Ct.data() + m * r, r, h);
    };
  });
}

void backward(const CoreCall& call) {
  const CoreParams& c = call.core;
  const int64_t r = c.r, k = c.k;
  // partial layout: dC^T (k r) | da (k)
  cpu::backward_rows(call, 6 * r * k + 2 * r, r * k + k, r, [&](auto acc) {
    using A = decltype(acc);
    // With w = coeff a v and dw = -Ct dh: da += coeff v dw; dv = coeff a dw; dCt += dv h0^T - w dh^T;
    // dp = (dh + Ct^T dv) * S.
    auto row = [=, S = static_cast<const A*>(c.S), a = static_cast<const A*>(c.a),
                Ct = cpu::transposed(static_cast<const A*>(c.A), r, k),
                coeff = A(c.coeff)](const A* p, const A* dh, A* dp, A* h0, A* part) {
      A *dCt = part, *da = part + r * k;
      for (int64_t j = 0; j < r; ++j) {
        h0[j] = p[j] * S[j];
        dp[j] = dh[j];
      }
      for (int64_t m = 0; m < k; ++m) {
        const A* cm = Ct.data() + m * r;
        const A v = cpu::dot(h0, cm, r), dw = -cpu::dot(dh, cm, r);
        const A dv = coeff * a[m] * dw;
        da[m] += coeff * v * dw;
        cpu::axpy(dv, h0, r, dCt + m * r);
        cpu::axpy(-coeff * a[m] * v, dh, r, dCt + m * r);
        cpu::axpy(dv, cm, r, dp);
      }
      for (int64_t j = 0; j < r; ++j) dp[j] *= S[j];
    };
    auto finish = [=](const A* total, A* dparams) {
      for (int64_t j = 0; j < r; ++j)
        for (int64_t m = 0; m < k; ++m) dparams[j * k + m] = total[m * r + j];
      std::copy(total + r * k, total + r * k + k, dparams + r * k);
    };
    return std::make_pair(row, finish);
  });
}

AX_REGISTER_CORE(Core::ablate, "ablate", &pack, &forward, &backward);

}  // namespace
}  // namespace ax
