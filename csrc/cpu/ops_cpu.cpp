// C++ CPU kernels of the registered ops: one parallel pass over the (tokens, r) rows, parameter
// gradients reduced in a fixed chunk order (same bits for any thread count). The diagonal and rotation
// cores use the per-row math of csrc/kernels/rowcore.h (which the CUDA kernels mirror); the low-rank
// cores (dplr, ablate) have SIMD-friendly CPU versions below. With ANTIPASTO_EXT_ENGINE=cuda-emulated
// the CUDA kernel source runs instead, through the CPU emulation of the CUDA execution model.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "csrc/kernels/rowcore.h"
#include "csrc/ops.h"
#include "csrc/layer_ops.h"

namespace ax {
namespace {

template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;

// Rows per chunk depend only on the row count, so the reduction order is fixed.
int64_t rows_per_chunk(int64_t n) { return std::max<int64_t>(16, (n + 127) / 128); }

// Items per task so that a task carries enough work to pay for a thread-pool hand-off (~10 us):
// small calls (decode, a few Cayley blocks) run inline on the calling thread.
int64_t grain(int64_t cost_per_item) { return std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(cost_per_item, 1)); }

// Calls row_fn(row, scratch) for every row, rows split over threads.
template <typename acc_t, typename RowFn>
void for_rows(int64_t n, int64_t row_cost, int64_t n_scratch, const RowFn& row_fn) {
  at::parallel_for(0, n, grain(row_cost), [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> scratch(n_scratch);
    for (int64_t i = r0; i < r1; ++i) row_fn(i, scratch.data());
  });
}

// Calls row_fn(row, scratch, partial) with per-chunk partial sums, then adds the partials in chunk
// order: deterministic parameter-gradient reductions.
template <typename acc_t, typename RowFn>
std::vector<acc_t> reduce_rows(int64_t n, int64_t row_cost, int64_t n_partial, int64_t n_scratch, const RowFn& row_fn) {
  const int64_t chunk = rows_per_chunk(n);
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  std::vector<acc_t> partial(n_chunks * n_partial, acc_t(0));
  at::parallel_for(0, n_chunks, grain(chunk * row_cost), [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> scratch(n_scratch);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i)
        row_fn(i, scratch.data(), partial.data() + c * n_partial);
  });
  std::vector<acc_t> total(n_partial, acc_t(0));
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t j = 0; j < n_partial; ++j) total[j] += partial[c * n_partial + j];
  return total;
}

template <typename scalar_t, typename acc_t>
void load_row(const scalar_t* src, int64_t r, acc_t* dst) {
  for (int64_t j = 0; j < r; ++j) dst[j] = static_cast<acc_t>(src[j]);
}
template <typename scalar_t, typename acc_t>
void store_row(const acc_t* src, int64_t r, scalar_t* dst) {
  for (int64_t j = 0; j < r; ++j) dst[j] = static_cast<scalar_t>(src[j]);
}

// The low-rank cores on the CPU: the same math as rowcore.h (which the CUDA kernels mirror), laid out
// for SIMD: the (r, k) factor is passed transposed as (k, r), so every product is a dot product with
// fixed independent lanes or an axpy over r -- both vectorise, in an order that does not depend on
// the thread count.
template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  acc_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) lane[l] += a[j + l] * b[j + l];
  for (int l = 0; j < n; ++j, ++l) lane[l] += a[j] * b[j];
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}
template <typename acc_t>
inline void axpy(acc_t alpha, const acc_t* x, int64_t n, acc_t* y) {
  for (int64_t j = 0; j < n; ++j) y[j] += alpha * x[j];
}

// dplr with Bt = B^T (k, r): t = A p; h = p * s + coeff Bt^T t.
template <typename acc_t>
void dplr_row_forward_cpu(const acc_t* p, const acc_t* s, const acc_t* A, const acc_t* Bt, acc_t coeff, int64_t r,
                          int64_t k, acc_t* h) {
  for (int64_t j = 0; j < r; ++j) h[j] = p[j] * s[j];
  for (int64_t m = 0; m < k; ++m) axpy(coeff * dot(p, A + m * r, r), Bt + m * r, r, h);
}
// u = coeff Bt dh; dp = dh * s + A^T u; ds += dh * p; dA += u p^T; dBt += coeff t dh^T.
template <typename acc_t>
void dplr_row_backward_cpu(const acc_t* dh, const acc_t* p, const acc_t* s, const acc_t* A, const acc_t* Bt,
                           acc_t coeff, int64_t r, int64_t k, acc_t* dp, acc_t* ds, acc_t* dA, acc_t* dBt) {
  for (int64_t j = 0; j < r; ++j) {
    dp[j] = dh[j] * s[j];
    ds[j] += dh[j] * p[j];
  }
  for (int64_t m = 0; m < k; ++m) {
    const acc_t t = dot(p, A + m * r, r), u = coeff * dot(dh, Bt + m * r, r);
    axpy(u, A + m * r, r, dp);
    axpy(u, p, r, dA + m * r);
    axpy(coeff * t, dh, r, dBt + m * r);
  }
}

// ablate with Ct = C^T (k, r): h0 = p S; v = Ct h0; h = h0 - Ct^T (coeff a v).  `v` is k scratch.
template <typename acc_t>
void ablate_row_forward_cpu(const acc_t* p, const acc_t* S, const acc_t* Ct, const acc_t* a, acc_t coeff, int64_t r,
                            int64_t k, acc_t* v, acc_t* h) {
  for (int64_t j = 0; j < r; ++j) h[j] = p[j] * S[j];
  for (int64_t m = 0; m < k; ++m) v[m] = dot(h, Ct + m * r, r);
  for (int64_t m = 0; m < k; ++m) axpy(-coeff * a[m] * v[m], Ct + m * r, r, h);
}
// With w = coeff a v and dw = -Ct dh: da += coeff v dw; dv = coeff a dw; dCt += dv h0^T - w dh^T;
// dp = (dh + Ct^T dv) * S.  `h0` is r scratch.
template <typename acc_t>
void ablate_row_backward_cpu(const acc_t* dh, const acc_t* p, const acc_t* S, const acc_t* Ct, const acc_t* a,
                             acc_t coeff, int64_t r, int64_t k, acc_t* h0, acc_t* dp, acc_t* dCt, acc_t* da) {
  for (int64_t j = 0; j < r; ++j) {
    h0[j] = p[j] * S[j];
    dp[j] = dh[j];
  }
  for (int64_t m = 0; m < k; ++m) {
    const acc_t* c = Ct + m * r;
    const acc_t v = dot(h0, c, r), dw = -dot(dh, c, r);
    const acc_t dv = coeff * a[m] * dw;
    da[m] += coeff * v * dw;
    axpy(dv, h0, r, dCt + m * r);
    axpy(-coeff * a[m] * v, dh, r, dCt + m * r);
    axpy(dv, c, r, dp);
  }
  for (int64_t j = 0; j < r; ++j) dp[j] *= S[j];
}

at::Tensor from_vector(const std::vector<float>& v, at::IntArrayRef shape) {
  return at::from_blob(const_cast<float*>(v.data()), shape, at::kFloat).clone();
}
at::Tensor from_vector(const std::vector<double>& v, at::IntArrayRef shape) {
  return at::from_blob(const_cast<double*>(v.data()), shape, at::kDouble).clone();
}

#define AX_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

// ---------------------------------------------------------------- block_cayley

// Calls fn(bs) with bs a compile-time constant for the common small block sizes, so the per-block
// loops of math.h unroll; a runtime int otherwise.
template <typename Fn>
void with_block_size(int64_t bs, const Fn& fn) {
  switch (bs) {
    case 2: return fn(std::integral_constant<int, 2>());
    case 3: return fn(std::integral_constant<int, 3>());
    case 4: return fn(std::integral_constant<int, 4>());
    case 8: return fn(std::integral_constant<int, 8>());
    default: return fn(int(bs));
  }
}

at::Tensor block_cayley_cpu(const at::Tensor& rot_T, int64_t block_size, double max_angle, double coeff) {
  check_block_cayley_args(rot_T, block_size, max_angle);
  if (use_emulated_engine()) return emulated::block_cayley(rot_T, block_size, max_angle, coeff);
  const auto acc = acc_dtype(rot_T.scalar_type());
  const at::Tensor t = rot_T.to(acc).contiguous();
  const int64_t n = t.size(0), bs = block_size, m = t.size(1);
  at::Tensor R = at::empty({n, bs, bs}, t.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "block_cayley_cpu", [&] {
    const scalar_t a_lim = cayley_a_lim(max_angle);
    const scalar_t* tp = t.data_ptr<scalar_t>();
    scalar_t* Rp = R.data_ptr<scalar_t>();
    with_block_size(bs, [&](auto BS) {
      at::parallel_for(0, n, grain(4 * bs * bs * bs), [&](int64_t b0, int64_t b1) {
        std::vector<scalar_t> work(2 * bs * bs);
        for (int64_t b = b0; b < b1; ++b)
          cayley_block_forward(tp + b * m, int(BS), a_lim, scalar_t(coeff), work.data(), Rp + b * bs * bs);
      });
    });
  });
  return R.to(rot_T.scalar_type());
}

at::Tensor block_cayley_backward_cpu(const at::Tensor& grad_R, const at::Tensor& R, const at::Tensor& rot_T,
                                     int64_t block_size, double max_angle, double coeff) {
  check_block_cayley_args(rot_T, block_size, max_angle);
  if (use_emulated_engine()) return emulated::block_cayley_backward(grad_R, R, rot_T, block_size, max_angle, coeff);
  const auto acc = acc_dtype(rot_T.scalar_type());
  const at::Tensor t = rot_T.to(acc).contiguous(), Ra = R.to(acc).contiguous(), G = grad_R.to(acc).contiguous();
  const int64_t n = t.size(0), bs = block_size, m = t.size(1);
  at::Tensor dt = at::empty_like(t);
  AT_DISPATCH_FLOATING_TYPES(acc, "block_cayley_backward_cpu", [&] {
    const scalar_t a_lim = cayley_a_lim(max_angle);
    with_block_size(bs, [&](auto BS) {
      at::parallel_for(0, n, grain(4 * bs * bs * bs), [&](int64_t b0, int64_t b1) {
        std::vector<scalar_t> work(3 * bs * bs);
        for (int64_t b = b0; b < b1; ++b)
          cayley_block_backward(G.data_ptr<scalar_t>() + b * bs * bs, Ra.data_ptr<scalar_t>() + b * bs * bs,
                                t.data_ptr<scalar_t>() + b * m, int(BS), a_lim, scalar_t(coeff), work.data(),
                                dt.data_ptr<scalar_t>() + b * m);
      });
    });
  });
  return dt.to(rot_T.scalar_type());
}

// ---------------------------------------------------------------- gain (antipasto, corda)

at::Tensor gain_core_cpu(const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, double coeff,
                         bool suppress_only) {
  check_core_args(p, S, {{"g", g, {S.size(0)}}});
  if (use_emulated_engine()) return emulated::gain_core(p, S, g, coeff, suppress_only);
  const at::Tensor x = p.contiguous();
  at::Tensor h = at::empty_like(x);
  const int64_t r = S.size(0), n = x.numel() / std::max<int64_t>(r, 1);
  AX_DISPATCH_FLOATS(x.scalar_type(), "gain_core_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const std::vector<acc_t> s = gain_scales<acc_t>(S, g, coeff, suppress_only, nullptr);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    for_rows<acc_t>(n, r, 2 * r, [&](int64_t i, acc_t* w) {
      load_row(xp + i * r, r, w);
      gain_row_forward(w, s.data(), int(r), w + r);
      store_row(w + r, r, hp + i * r);
    });
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor> gain_core_backward_cpu(const at::Tensor& grad_h, const at::Tensor& p,
                                                          const at::Tensor& S, const at::Tensor& g, double coeff,
                                                          bool suppress_only) {
  check_core_args(p, S, {{"g", g, {S.size(0)}}, {"grad_h", grad_h, p.sizes()}});
  if (use_emulated_engine()) return emulated::gain_core_backward(grad_h, p, S, g, coeff, suppress_only);
  const at::Tensor x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  at::Tensor dp = at::empty_like(x);
  const int64_t r = S.size(0), n = x.numel() / std::max<int64_t>(r, 1);
  at::Tensor dg;
  AX_DISPATCH_FLOATS(x.scalar_type(), "gain_core_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    std::vector<acc_t> dscale;
    const std::vector<acc_t> s = gain_scales<acc_t>(S, g, coeff, suppress_only, &dscale);
    const scalar_t *xp = x.data_ptr<scalar_t>(), *dyp = dy.data_ptr<scalar_t>();
    scalar_t* dpp = dp.data_ptr<scalar_t>();
    std::vector<acc_t> ds = reduce_rows<acc_t>(n, 2 * r, r, 3 * r, [&](int64_t i, acc_t* w, acc_t* part) {
      load_row(xp + i * r, r, w);
      load_row(dyp + i * r, r, w + r);
      gain_row_backward(w + r, w, s.data(), int(r), w + 2 * r, part);
      store_row(w + 2 * r, r, dpp + i * r);
    });
    for (int64_t j = 0; j < r; ++j) ds[j] *= dscale[j];
    dg = from_vector(ds, {r}).to(g.scalar_type());
  });
  return {dp, dg};
}

// ---------------------------------------------------------------- dplr

at::Tensor dplr_core_cpu(const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, const at::Tensor& A,
                         const at::Tensor& B, double coeff, bool suppress_only) {
  const int64_t r = S.size(0), k = A.dim() == 2 ? A.size(0) : 0;
  check_core_args(p, S, {{"g", g, {r}}, {"A", A, {k, r}}, {"B", B, {r, k}}});
  if (use_emulated_engine()) return emulated::dplr_core(p, S, g, A, B, coeff, suppress_only);
  const at::Tensor x = p.contiguous();
  at::Tensor h = at::empty_like(x);
  const int64_t n = x.numel() / std::max<int64_t>(r, 1);
  AX_DISPATCH_FLOATS(x.scalar_type(), "dplr_core_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto acc = acc_dtype(x.scalar_type());
    const std::vector<acc_t> s = gain_scales<acc_t>(S, g, coeff, suppress_only, nullptr);
    const at::Tensor Aa = A.to(acc).contiguous(), Bt = B.to(acc).t().contiguous();
    const acc_t *Ap = Aa.data_ptr<acc_t>(), *Btp = Bt.data_ptr<acc_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    for_rows<acc_t>(n, 2 * r * k + r, 2 * r, [&](int64_t i, acc_t* w) {
      load_row(xp + i * r, r, w);
      dplr_row_forward_cpu(w, s.data(), Ap, Btp, acc_t(coeff), r, k, w + r);
      store_row(w + r, r, hp + i * r);
    });
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dplr_core_backward_cpu(
    const at::Tensor& grad_h, const at::Tensor& p, const at::Tensor& S, const at::Tensor& g, const at::Tensor& A,
    const at::Tensor& B, double coeff, bool suppress_only) {
  const int64_t r = S.size(0), k = A.dim() == 2 ? A.size(0) : 0;
  check_core_args(p, S, {{"g", g, {r}}, {"A", A, {k, r}}, {"B", B, {r, k}}, {"grad_h", grad_h, p.sizes()}});
  if (use_emulated_engine()) return emulated::dplr_core_backward(grad_h, p, S, g, A, B, coeff, suppress_only);
  const at::Tensor x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  at::Tensor dp = at::empty_like(x), dg, dA, dB;
  const int64_t n = x.numel() / std::max<int64_t>(r, 1);
  AX_DISPATCH_FLOATS(x.scalar_type(), "dplr_core_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto acc = acc_dtype(x.scalar_type());
    std::vector<acc_t> dscale;
    const std::vector<acc_t> s = gain_scales<acc_t>(S, g, coeff, suppress_only, &dscale);
    const at::Tensor Aa = A.to(acc).contiguous(), Bt = B.to(acc).t().contiguous();
    const acc_t *Ap = Aa.data_ptr<acc_t>(), *Btp = Bt.data_ptr<acc_t>();
    const scalar_t *xp = x.data_ptr<scalar_t>(), *dyp = dy.data_ptr<scalar_t>();
    scalar_t* dpp = dp.data_ptr<scalar_t>();
    // partial layout: ds (r) | dA (k r) | dB^T (k r)
    std::vector<acc_t> tot = reduce_rows<acc_t>(n, 5 * r * k + 2 * r, r + 2 * k * r, 3 * r, [&](int64_t i, acc_t* w, acc_t* part) {
      load_row(xp + i * r, r, w);
      load_row(dyp + i * r, r, w + r);
      dplr_row_backward_cpu(w + r, w, s.data(), Ap, Btp, acc_t(coeff), r, k, w + 2 * r, part, part + r,
                            part + r + k * r);
      store_row(w + 2 * r, r, dpp + i * r);
    });
    for (int64_t j = 0; j < r; ++j) tot[j] *= dscale[j];
    const at::Tensor all = from_vector(tot, {r + 2 * k * r});
    dg = all.narrow(0, 0, r).to(g.scalar_type(), false, true);
    dA = all.narrow(0, r, k * r).view({k, r}).to(A.scalar_type(), false, true);
    dB = all.narrow(0, r + k * r, k * r).view({k, r}).t().to(B.scalar_type(), false, true, at::MemoryFormat::Contiguous);
  });
  return {dp, dg, dA, dB};
}

// ---------------------------------------------------------------- rot

at::Tensor rot_core_cpu(const at::Tensor& p, const at::Tensor& S, const at::Tensor& delta_s, const at::Tensor& R,
                        double coeff, int64_t side) {
  const int64_t r = S.size(0);
  check_rot_args(p, S, delta_s, R, side);
  if (use_emulated_engine()) return emulated::rot_core(p, S, delta_s, R, coeff, side);
  const at::Tensor x = p.contiguous();
  at::Tensor h = at::empty_like(x);
  const int64_t n = x.numel() / std::max<int64_t>(r, 1), bs = side == kRotNone ? 1 : R.size(1);
  AX_DISPATCH_FLOATS(x.scalar_type(), "rot_core_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto acc = acc_dtype(x.scalar_type());
    const std::vector<acc_t> s = additive_scales<acc_t>(S, delta_s, coeff);
    const at::Tensor Ra = R.to(acc).contiguous();
    const acc_t* Rp = Ra.data_ptr<acc_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    with_block_size(bs, [&](auto BS) {  // a constant block size unrolls the per-block loops
      for_rows<acc_t>(n, r * bs + r, 2 * r, [&](int64_t i, acc_t* w) {
        load_row(xp + i * r, r, w);
        rot_row_forward(w, s.data(), Rp, int(side), int(r), int(BS), w + r);
        store_row(w + r, r, hp + i * r);
      });
    });
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rot_core_backward_cpu(const at::Tensor& grad_h, const at::Tensor& p,
                                                                     const at::Tensor& S, const at::Tensor& delta_s,
                                                                     const at::Tensor& R, double coeff, int64_t side) {
  const int64_t r = S.size(0);
  check_rot_args(p, S, delta_s, R, side);
  check_core_args(p, S, {{"grad_h", grad_h, p.sizes()}});
  if (use_emulated_engine()) return emulated::rot_core_backward(grad_h, p, S, delta_s, R, coeff, side);
  const at::Tensor x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  at::Tensor dp = at::empty_like(x), dds, dR;
  const int64_t n = x.numel() / std::max<int64_t>(r, 1), bs = side == kRotNone ? 1 : R.size(1);
  const int64_t n_rot = side == kRotNone ? 0 : R.numel();
  AX_DISPATCH_FLOATS(x.scalar_type(), "rot_core_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto acc = acc_dtype(x.scalar_type());
    const std::vector<acc_t> s = additive_scales<acc_t>(S, delta_s, coeff);
    const at::Tensor Ra = R.to(acc).contiguous();
    const acc_t* Rp = Ra.data_ptr<acc_t>();
    const scalar_t *xp = x.data_ptr<scalar_t>(), *dyp = dy.data_ptr<scalar_t>();
    scalar_t* dpp = dp.data_ptr<scalar_t>();
    // partial layout: ds (r) | dR (n_blocks bs bs)
    std::vector<acc_t> tot;
    with_block_size(bs, [&](auto BS) {
      tot = reduce_rows<acc_t>(n, 3 * r * bs + 2 * r, r + n_rot, 3 * r + bs, [&](int64_t i, acc_t* w, acc_t* part) {
        load_row(xp + i * r, r, w);
        load_row(dyp + i * r, r, w + r);
        rot_row_backward(w + r, w, s.data(), Rp, int(side), int(r), int(BS), w + 3 * r, w + 2 * r, part, part + r);
        store_row(w + 2 * r, r, dpp + i * r);
      });
    });
    for (int64_t j = 0; j < r; ++j) tot[j] *= acc_t(coeff);
    const at::Tensor all = from_vector(tot, {r + n_rot});
    dds = all.narrow(0, 0, r).to(delta_s.scalar_type(), false, true);
    dR = all.narrow(0, r, n_rot).view(R.sizes()).to(R.scalar_type(), false, true);
  });
  return {dp, dds, dR};
}

// ---------------------------------------------------------------- ablate

at::Tensor ablate_core_cpu(const at::Tensor& p, const at::Tensor& S, const at::Tensor& C, const at::Tensor& a,
                           double coeff) {
  const int64_t r = S.size(0), k = C.dim() == 2 ? C.size(1) : 0;
  check_core_args(p, S, {{"C", C, {r, k}}, {"a", a, {k}}});
  if (use_emulated_engine()) return emulated::ablate_core(p, S, C, a, coeff);
  const at::Tensor x = p.contiguous();
  at::Tensor h = at::empty_like(x);
  const int64_t n = x.numel() / std::max<int64_t>(r, 1);
  AX_DISPATCH_FLOATS(x.scalar_type(), "ablate_core_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto acc = acc_dtype(x.scalar_type());
    const at::Tensor Sa = S.to(acc).contiguous(), Ct = C.to(acc).t().contiguous(), aa = a.to(acc).contiguous();
    const acc_t *Sp = Sa.data_ptr<acc_t>(), *Ctp = Ct.data_ptr<acc_t>(), *ap = aa.data_ptr<acc_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    for_rows<acc_t>(n, 2 * r * k + r, 2 * r + k, [&](int64_t i, acc_t* w) {
      load_row(xp + i * r, r, w);
      ablate_row_forward_cpu(w, Sp, Ctp, ap, acc_t(coeff), r, k, w + 2 * r, w + r);
      store_row(w + r, r, hp + i * r);
    });
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ablate_core_backward_cpu(const at::Tensor& grad_h, const at::Tensor& p,
                                                                        const at::Tensor& S, const at::Tensor& C,
                                                                        const at::Tensor& a, double coeff) {
  const int64_t r = S.size(0), k = C.dim() == 2 ? C.size(1) : 0;
  check_core_args(p, S, {{"C", C, {r, k}}, {"a", a, {k}}, {"grad_h", grad_h, p.sizes()}});
  if (use_emulated_engine()) return emulated::ablate_core_backward(grad_h, p, S, C, a, coeff);
  const at::Tensor x = p.contiguous(), dy = grad_h.to(p.scalar_type()).contiguous();
  at::Tensor dp = at::empty_like(x), dC, da;
  const int64_t n = x.numel() / std::max<int64_t>(r, 1);
  AX_DISPATCH_FLOATS(x.scalar_type(), "ablate_core_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto acc = acc_dtype(x.scalar_type());
    const at::Tensor Sa = S.to(acc).contiguous(), Ct = C.to(acc).t().contiguous(), aa = a.to(acc).contiguous();
    const acc_t *Sp = Sa.data_ptr<acc_t>(), *Ctp = Ct.data_ptr<acc_t>(), *ap = aa.data_ptr<acc_t>();
    const scalar_t *xp = x.data_ptr<scalar_t>(), *dyp = dy.data_ptr<scalar_t>();
    scalar_t* dpp = dp.data_ptr<scalar_t>();
    // partial layout: dC^T (k r) | da (k)
    std::vector<acc_t> tot = reduce_rows<acc_t>(n, 6 * r * k + 2 * r, r * k + k, 4 * r, [&](int64_t i, acc_t* w, acc_t* part) {
      load_row(xp + i * r, r, w);
      load_row(dyp + i * r, r, w + r);
      ablate_row_backward_cpu(w + r, w, Sp, Ctp, ap, acc_t(coeff), r, k, w + 3 * r, w + 2 * r, part, part + r * k);
      store_row(w + 2 * r, r, dpp + i * r);
    });
    const at::Tensor all = from_vector(tot, {r * k + k});
    dC = all.narrow(0, 0, r * k).view({k, r}).t().to(C.scalar_type(), false, true, at::MemoryFormat::Contiguous);
    da = all.narrow(0, r * k, k).to(a.scalar_type(), false, true);
  });
  return {dp, dC, da};
}

}  // namespace

// ------------------------------------------------------------------------------------ layer ops
// Native engine: the CPU BLAS for the GEMMs, the cores above for h (csrc/layer_ops.h, path "unfused").

std::tuple<at::Tensor, at::Tensor> layer_gain_cpu(const at::Tensor& x, const at::Tensor& W,
                                                  const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                                  const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& g,
                                                  double coeff, bool suppress_only, bool need_p) {
  if (use_emulated_engine()) return emulated::layer_gain(x, W, bias, U, Vh, S, g, coeff, suppress_only, need_p);
  return project::layer_gain<project::Unfused>(x, W, bias, U, Vh, S, g, coeff, suppress_only, need_p);
}

std::tuple<at::Tensor, at::Tensor> layer_rot_cpu(const at::Tensor& x, const at::Tensor& W,
                                                 const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                                 const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& delta_s,
                                                 const at::Tensor& R, double coeff, int64_t side, bool need_p) {
  if (use_emulated_engine()) return emulated::layer_rot(x, W, bias, U, Vh, S, delta_s, R, coeff, side, need_p);
  return project::layer_rot<project::Unfused>(x, W, bias, U, Vh, S, delta_s, R, coeff, side, need_p);
}

std::tuple<at::Tensor, at::Tensor> layer_dplr_cpu(const at::Tensor& x, const at::Tensor& W,
                                                  const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                                  const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& g,
                                                  const at::Tensor& A, const at::Tensor& B, double coeff,
                                                  bool suppress_only, bool need_p) {
  if (use_emulated_engine()) return emulated::layer_dplr(x, W, bias, U, Vh, S, g, A, B, coeff, suppress_only, need_p);
  return project::layer_dplr<project::Unfused>(x, W, bias, U, Vh, S, g, A, B, coeff, suppress_only, need_p);
}

std::tuple<at::Tensor, at::Tensor> layer_ablate_cpu(const at::Tensor& x, const at::Tensor& W,
                                                    const c10::optional<at::Tensor>& bias, const at::Tensor& U,
                                                    const at::Tensor& Vh, const at::Tensor& S, const at::Tensor& C,
                                                    const at::Tensor& a, double coeff, bool need_p) {
  if (use_emulated_engine()) return emulated::layer_ablate(x, W, bias, U, Vh, S, C, a, coeff, need_p);
  return project::layer_ablate<project::Unfused>(x, W, bias, U, Vh, S, C, a, coeff, need_p);
}

TORCH_LIBRARY_IMPL(antipasto_ext, CPU, m) {
  m.impl("block_cayley", &block_cayley_cpu);
  m.impl("block_cayley_backward", &block_cayley_backward_cpu);
  m.impl("gain_core", &gain_core_cpu);
  m.impl("gain_core_backward", &gain_core_backward_cpu);
  m.impl("dplr_core", &dplr_core_cpu);
  m.impl("dplr_core_backward", &dplr_core_backward_cpu);
  m.impl("rot_core", &rot_core_cpu);
  m.impl("rot_core_backward", &rot_core_backward_cpu);
  m.impl("ablate_core", &ablate_core_cpu);
  m.impl("ablate_core_backward", &ablate_core_backward_cpu);
  m.impl("layer_gain", &layer_gain_cpu);
  m.impl("layer_rot", &layer_rot_cpu);
  m.impl("layer_dplr", &layer_dplr_cpu);
  m.impl("layer_ablate", &layer_ablate_cpu);
}

}  // namespace ax
