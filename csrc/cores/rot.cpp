// The rot core (antipasto_rot; docs/SPEC.md §2) on the host: V side h_b = (p_b R_b^T) * s_b, U side
// h_b = (p * s)_b R_b, none h = p * s; s = S + coeff delta_s. params [delta_s, R], option the side (0 none, 1 V,
// 2 U; R unused for none); dparams d delta_s (r) | dR (r bs, sides V, U).
#include "csrc/checks.h"
#include "csrc/cores/core_host.h"
#include "csrc/cpu/rows.h"
#include "csrc/kernels/rowcore.h"

namespace ax {
namespace {

void pack(Packer& p, int64_t option) {
  p.count(2, "delta_s, R");
  CoreParams& c = p.params();
  TORCH_CHECK(option == kRotNone || option == kRotV || option == kRotU,
              "antipasto_ext: side must be 0 (none), 1 (V) or 2 (U), got ", option);
  c.side = int(option);
  c.g = p.param(0, "delta_s", {p.r()});
  if (c.side == kRotNone) return;
  const at::Tensor& R = p.raw(1);
  check_float(R, "R");
  const int64_t bs = R.dim() == 3 ? R.size(1) : 0;
  TORCH_CHECK(R.dim() == 3 && R.size(1) == R.size(2) && bs >= 2 && bs * R.size(0) == p.r(),
              "antipasto_ext: R must have shape (r / block_size, block_size, block_size) with r = ", p.r(), ", got ",
              R.sizes());
  c.bs = bs;
  c.R = p.param(1, "R", R.sizes());
}

template <typename acc_t>
std::vector<acc_t> scales(const CoreParams& c) {
  const acc_t *S = static_cast<const acc_t*>(c.S), *ds = static_cast<const acc_t*>(c.g);
  std::vector<acc_t> s(static_cast<size_t>(c.r));
  for (int64_t j = 0; j < c.r; ++j) s[j] = S[j] + acc_t(c.coeff) * ds[j];
  return s;
}

void forward(const CoreCall& call) {
  cpu::dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = cpu::acc_of<T>;
    const CoreParams& c = call.core;
    const int64_t r = c.r;
    const T* x = static_cast<const T*>(call.p);
    T* h = static_cast<T*>(call.h);
    const std::vector<acc_t> s = scales<acc_t>(c);
    const acc_t* R = static_cast<const acc_t*>(c.R);
    cpu::with_block_size(c.bs, [&](auto BS) {  // a constant block size unrolls the per-block loops
      cpu::for_rows<acc_t>(call.n, r * c.bs + r, 2 * r, [&](int64_t i, acc_t* w) {
        cpu::load_row(x + i * r, r, w);
        rot_row_forward(w, s.data(), R, c.side, int(r), int(BS), w + r);
        cpu::store_row(w + r, r, h + i * r);
      });
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
    const std::vector<acc_t> s = scales<acc_t>(c);
    const acc_t* R = static_cast<const acc_t*>(c.R);
    const int64_t n_rot = c.side == kRotNone ? 0 : r * c.bs;  // partial layout: ds (r) | dR (n_blocks bs bs)
    cpu::with_block_size(c.bs, [&](auto BS) {
      cpu::reduce_rows<acc_t>(call.n, 3 * r * c.bs + 2 * r, r + n_rot, 3 * r + c.bs, tot,
                              [&](int64_t i, acc_t* w, acc_t* part) {
                                cpu::load_row(x + i * r, r, w);
                                cpu::load_row(dy + i * r, r, w + r);
                                rot_row_backward(w + r, w, s.data(), R, c.side, int(r), int(BS), w + 3 * r,
                                                 w + 2 * r, part, part + r);
                                cpu::store_row(w + 2 * r, r, dp + i * r);
                              });
    });
    for (int64_t j = 0; j < r; ++j) tot[j] *= acc_t(c.coeff);
  });
}

AX_REGISTER_CORE(Core::rot, "rot", &pack, &forward, &backward);

}  // namespace
}  // namespace ax
