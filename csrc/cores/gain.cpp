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
  cpu::dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = cpu::acc_of<T>;
    const CoreParams& c = call.core;
    const int64_t r = c.r;
    const T* x = static_cast<const T*>(call.p);
    T* h = static_cast<T*>(call.h);
    const std::vector<acc_t> s = cpu::gain_scales<acc_t>(c, nullptr);
    cpu::for_rows<acc_t>(call.n, r, 2 * r, [&](int64_t i, acc_t* w) {
      cpu::load_row(x + i * r, r, w);
      gain_row_forward(w, s.data(), int(r), w + r);
      cpu::store_row(w + r, r, h + i * r);
    });
  });
}

void backward(const CoreCall& call) {
  cpu::dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = cpu::acc_of<T>;
    const CoreParams& c = call.core;
    const int64_t r = c.r;
    const T *x = static_cast<const T*>(call.p), *dy = static_cast<const T*>(call.grad_h);
    T* dp = static_cast<T*>(call.dp);
    acc_t* tot = static_cast<acc_t*>(call.dparams);
    std::vector<acc_t> dscale;
    const std::vector<acc_t> s = cpu::gain_scales<acc_t>(c, &dscale);
    cpu::reduce_rows<acc_t>(call.n, 2 * r, r, 3 * r, tot, [&](int64_t i, acc_t* w, acc_t* part) {
      cpu::load_row(x + i * r, r, w);
      cpu::load_row(dy + i * r, r, w + r);
      gain_row_backward(w + r, w, s.data(), int(r), w + 2 * r, part);
      cpu::store_row(w + 2 * r, r, dp + i * r);
    });
    for (int64_t j = 0; j < r; ++j) tot[j] *= dscale[j];
  });
}

AX_REGISTER_CORE(Core::gain, "gain", &pack, &forward, &backward);

}  // namespace
}  // namespace ax
