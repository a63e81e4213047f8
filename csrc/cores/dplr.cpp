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
  const at::IntArrayRef A = p.shape(1);
  const int64_t r = p.r(), k = A.size() == 2 ? A[0] : 0;
  TORCH_CHECK(k >= 1, "antipasto_ext: A must have shape (k, r) with k >= 1 and r = ", r, ", got ", p.raw(1).sizes());
  c.suppress_only = option != 0;
  c.k = k;
  c.g = p.param(0, "g", {r});
  c.A = p.param(1, "A", {k, r});
  c.B = p.param(2, "B", {r, k});
}

void forward(const CoreCall& call) {
  const CoreParams& c = call.core;
  const int64_t r = c.r, k = c.k;
  cpu::forward_rows(call, 2 * r * k + r, 0, [&](auto acc) {
    using A = decltype(acc);
    // t = A p; h = p * s + coeff Bt^T t
    return [=, s = cpu::gain_scales<A>(c, nullptr), Am = static_cast<const A*>(c.A),
            Bt = cpu::transposed(static_cast<const A*>(c.B), r, k), coeff = A(c.coeff)](const A* p, A* h, A*) {
      for (int64_t j = 0; j < r; ++j) h[j] = p[j] * s[j];
      for (int64_t m = 0; m < k; ++m) cpu::axpy(coeff * cpu::dot(p, Am + m * r, r), Bt.data() + m * r, r, h);
    };
  });
}

void backward(const CoreCall& call) {
  const CoreParams& c = call.core;
  const int64_t r = c.r, k = c.k;
  // partial layout: ds (r) | dA (k r) | dB^T (k r)
  cpu::backward_rows(call, 5 * r * k + 2 * r, r + 2 * k * r, 0, [&](auto acc) {
    using A = decltype(acc);
    std::vector<A> dscale;
    std::vector<A> s = cpu::gain_scales<A>(c, &dscale);
    // u = coeff Bt dh; dp = dh * s + A^T u; ds += dh * p; dA += u p^T; dBt += coeff t dh^T
    auto row = [=, Am = static_cast<const A*>(c.A), Bt = cpu::transposed(static_cast<const A*>(c.B), r, k),
                coeff = A(c.coeff)](const A* p, const A* dh, A* dp, A*, A* part) {
      A *ds = part, *dA = part + r, *dBt = part + r + k * r;
      for (int64_t j = 0; j < r; ++j) {
        dp[j] = dh[j] * s[j];
        ds[j] += dh[j] * p[j];
      }
      for (int64_t m = 0; m < k; ++m) {
        const A t = cpu::dot(p, Am + m * r, r), u = coeff * cpu::dot(dh, Bt.data() + m * r, r);
        cpu::axpy(u, Am + m * r, r, dp);
        cpu::axpy(u, p, r, dA + m * r);
        cpu::axpy(coeff * t, dh, r, dBt + m * r);
      }
    };
    auto finish = [=](const A* total, A* dparams) {
      for (int64_t j = 0; j < r; ++j) dparams[j] = total[j] * dscale[j];
      std::copy(total + r, total + r + k * r, dparams + r);
      const A* dBt = total + r + k * r;
      for (int64_t j = 0; j < r; ++j)
        for (int64_t m = 0; m < k; ++m) dparams[r + k * r + j * k + m] = dBt[m * r + j];
    };
    return std::make_pair(row, finish);
  });
}

AX_REGISTER_CORE(Core::dplr, "dplr", &pack, &forward, &backward);

}  // namespace
}  // namespace ax
