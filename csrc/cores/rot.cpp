// The rot core (antipasto_rot; docs/SPEC.md §2) on the host: V side h_b = (p_b R_b^T) * s_b, U side
// h_b = (p * s)_b R_b, none h = p * s; s = S + coeff delta_s. params [delta_s, R], option the side (0 none, 1 V,
// 2 U; R unused for none); dparams d delta_s (r) | dR (r bs, sides V, U). A steered call reaches these kernels one
// group at a time (csrc/cpu/kernels.cpp).
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
  // Steered: one rotation set per group, (groups, r / bs, bs, bs).
  const at::Tensor& R = p.raw(1);
  check_float(R, "R");
  const int64_t lead = c.coeffs ? 1 : 0, dims = 3 + lead;
  const int64_t bs = R.dim() == dims ? R.size(1 + lead) : 0;
  TORCH_CHECK(R.dim() == dims && R.size(lead + 1) == R.size(lead + 2) && bs >= 2 && bs * R.size(lead) == p.r() &&
                  (!lead || R.size(0) == c.entries),
              "antipasto_ext: R must have shape ", lead ? "(groups, " : "(",
              "r / block_size, block_size, block_size) with r = ", p.r(), lead ? " and one set per coeffs entry" : "",
              ", got ", R.sizes());
  c.bs = bs;
  c.R = p.param(1, "R", R.sizes(), c.coeffs != nullptr);
}

// s = S + coeff delta_s.
template <typename acc_t>
std::vector<acc_t> scales(const CoreParams& c) {
  const acc_t *S = static_cast<const acc_t*>(c.S), *ds = static_cast<const acc_t*>(c.g);
  std::vector<acc_t> s(static_cast<size_t>(c.r));
  for (int64_t j = 0; j < c.r; ++j) s[j] = S[j] + acc_t(c.coeff) * ds[j];
  return s;
}

// A constant block size unrolls the per-block loops (2, 3, 4, 8).
void forward(const CoreCall& call) {
  const CoreParams& c = call.core;
  const int r = int(c.r), side = c.side;
  cpu::with_block_size(c.bs, [&](auto BS) {
    cpu::forward_rows(call, r * c.bs + r, 0, [&](auto acc) {
      using A = decltype(acc);
      return [=, R = static_cast<const A*>(c.R), s = scales<A>(c)](const A* p, A* h, A*) {
        rot_row_forward(p, s.data(), R, side, r, int(BS), h);
      };
    });
  });
}

void backward(const CoreCall& call) {
  const CoreParams& c = call.core;
  const int r = int(c.r), side = c.side;
  const int64_t n_part = r + (side == kRotNone ? 0 : r * c.bs);  // ds (r) | dR (n_blocks bs bs)
  cpu::with_block_size(c.bs, [&](auto BS) {
    cpu::backward_rows(call, 3 * r * c.bs + 2 * r, n_part, c.bs, [&](auto acc) {
      using A = decltype(acc);
      auto row = [=, R = static_cast<const A*>(c.R), s = scales<A>(c)](const A* p, const A* dh, A* dp, A* q, A* part) {
        rot_row_backward(dh, p, s.data(), R, side, r, int(BS), q, dp, part, part + r);
      };
      auto finish = [=, coeff = A(c.coeff)](const A* total, A* dparams) {
        for (int64_t j = 0; j < n_part; ++j) dparams[j] = j < r ? total[j] * coeff : total[j];
      };
      return std::make_pair(row, finish);
    });
  });
}

AX_REGISTER_CORE(Core::rot, "rot", &pack, &forward, &backward);

}  // namespace
}  // namespace ax
