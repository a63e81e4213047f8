// The gain core (antipasto, corda; docs/SPEC.md §1, §4) on the host: h = p * s, s = S (1 + ELU(coeff g')),
// g' = min(g, 0) with suppress_only. params [g], option suppress_only; dparams dg (r).
#include "csrc/cores/core_host.h"
#include "csrc/cpu/rows.h"
#include "csrc/kernels/rowcore.h"

namespace ax {
namespace {

void pack(Packer& p, int64_t option) {
  p.count(1, "g");
  CoreParams& c = p.params();
  c.suppress_only = option != 0;
  c.g = p.param(0, "g", {p.r()});
}

void forward(const CoreCall& call) {
  const int r = int(call.core.r);
  cpu::forward_rows(call, r, 0, [&](auto acc) {
    using A = decltype(acc);
    return [r, s = cpu::gain_scales<A>(call.core, nullptr)](const A* p, A* h, A*) { gain_row_forward(p, s.data(), r, h); };
  });
}

void backward(const CoreCall& call) {
  const int r = int(call.core.r);
  cpu::backward_rows(call, 2 * r, r, 0, [&](auto acc) {
    using A = decltype(acc);
    std::vector<A> dscale;
    std::vector<A> s = cpu::gain_scales<A>(call.core, &dscale);
    auto row = [r, s](const A* p, const A* dh, A* dp, A*, A* part) { gain_row_backward(dh, p, s.data(), r, dp, part); };
    auto finish = [r, dscale](const A* total, A* dparams) {
      for (int j = 0; j < r; ++j) dparams[j] = total[j] * dscale[j];
    };
    return std::make_pair(row, finish);
  });
}

AX_REGISTER_CORE(Core::gain, "gain", &pack, &forward, &backward);

}  // namespace
}  // namespace ax
