// The C++ CPU kernel set (ax::cpu_impl): the kernel API of csrc/kernels/api.h on host memory. One parallel pass
// over the (n, r) rows; parameter gradients reduced in fixed chunks of core_rows_per_chunk(n) rows, summed in
// chunk order (the same bits for any thread count, and the chunking of the CUDA kernels). The gain and rot
// cores run the per-row math of csrc/kernels/rowcore.h (which the CUDA kernels mirror); the low-rank cores
// (dplr, ablate) have SIMD-friendly versions here. Raw pointers; ATen's thread pool and c10's 16-bit types.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "csrc/kernels/api.h"
#include "csrc/kernels/math.h"
#include "csrc/kernels/rowcore.h"

namespace ax {
namespace cpu_impl {
namespace {

template <typename T>
using acc_of = std::conditional_t<std::is_same<T, double>::value, double, float>;

// Items per task so that a task carries enough work to pay for a thread-pool hand-off (~10 us): small calls
// (decode, a few Cayley blocks) run inline on the calling thread.
int64_t grain(int64_t cost_per_item) { return std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(cost_per_item, 1)); }

// Calls row_fn(row, scratch) for every row, rows split over threads.
template <typename acc_t, typename RowFn>
void for_rows(int64_t n, int64_t row_cost, int64_t n_scratch, const RowFn& row_fn) {
  at::parallel_for(0, n, grain(row_cost), [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> scratch(n_scratch);
    for (int64_t i = r0; i < r1; ++i) row_fn(i, scratch.data());
  });
}

// Calls row_fn(row, scratch, partial) with per-chunk partial sums, then adds the partials in chunk order into
// `total` (n_partial entries).
template <typename acc_t, typename RowFn>
void reduce_rows(int64_t n, int64_t row_cost, int64_t n_partial, int64_t n_scratch, acc_t* total, const RowFn& row_fn) {
  const int64_t chunk = core_rows_per_chunk(n), n_chunks = core_chunks(n);
  std::vector<acc_t> partial(n_chunks * n_partial, acc_t(0));
  at::parallel_for(0, n_chunks, grain(chunk * row_cost), [&](int64_t c0, int64_t c1) {
    std::vector<acc_t> scratch(n_scratch);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i)
        row_fn(i, scratch.data(), partial.data() + c * n_partial);
  });
  std::fill(total, total + n_partial, acc_t(0));
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t j = 0; j < n_partial; ++j) total[j] += partial[c * n_partial + j];
}

template <typename T, typename acc_t>
void load_row(const T* src, int64_t r, acc_t* dst) {
  for (int64_t j = 0; j < r; ++j) dst[j] = static_cast<acc_t>(src[j]);
}
template <typename T, typename acc_t>
void store_row(const acc_t* src, int64_t r, T* dst) {
  for (int64_t j = 0; j < r; ++j) dst[j] = static_cast<T>(src[j]);
}

// The low-rank cores on the CPU: the same math as the CUDA kernels, laid out for SIMD: the (r, k) factor is
// used transposed as (k, r), so every product is a dot product with fixed independent lanes or an axpy over r
// -- both vectorise, in an order that does not depend on the thread count.
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

// (r, k) row-major -> (k, r): the layout of the SIMD versions above.
template <typename acc_t>
std::vector<acc_t> transposed(const acc_t* M, int64_t r, int64_t k) {
  std::vector<acc_t> t(static_cast<size_t>(r * k));
  for (int64_t j = 0; j < r; ++j)
    for (int64_t m = 0; m < k; ++m) t[m * r + j] = M[j * k + m];
  return t;
}

// s (r) of the diagonal part: the gain (gain, dplr; with d s / d g when dscale is given) or S + coeff delta_s.
template <typename acc_t>
std::vector<acc_t> scales(const CoreParams& c, std::vector<acc_t>* dscale) {
  const acc_t *S = static_cast<const acc_t*>(c.S), *g = static_cast<const acc_t*>(c.g);
  std::vector<acc_t> s(static_cast<size_t>(c.r));
  if (dscale) dscale->assign(static_cast<size_t>(c.r), acc_t(0));
  for (int64_t j = 0; j < c.r; ++j) {
    if (c.core == Core::rot)
      s[j] = S[j] + acc_t(c.coeff) * g[j];
    else
      s[j] = gain_scale<acc_t>(S[j], g[j], acc_t(c.coeff), c.suppress_only, dscale ? dscale->data() + j : nullptr);
  }
  return s;
}

// Calls fn(bs) with bs a compile-time constant for the common small block sizes, so the per-block loops
// unroll; a runtime int otherwise.
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

template <typename T>
void forward_typed(const CoreCall& call) {
  using acc_t = acc_of<T>;
  const CoreParams& c = call.core;
  const int64_t n = call.n, r = c.r, k = c.k;
  const T* x = static_cast<const T*>(call.p);
  T* h = static_cast<T*>(call.h);
  const acc_t coeff = acc_t(c.coeff);
  switch (c.core) {
    case Core::gain: {
      const std::vector<acc_t> s = scales<acc_t>(c, nullptr);
      for_rows<acc_t>(n, r, 2 * r, [&](int64_t i, acc_t* w) {
        load_row(x + i * r, r, w);
        gain_row_forward(w, s.data(), int(r), w + r);
        store_row(w + r, r, h + i * r);
      });
      return;
    }
    case Core::rot: {
      const std::vector<acc_t> s = scales<acc_t>(c, nullptr);
      const acc_t* R = static_cast<const acc_t*>(c.R);
      with_block_size(c.bs, [&](auto BS) {  // a constant block size unrolls the per-block loops
        for_rows<acc_t>(n, r * c.bs + r, 2 * r, [&](int64_t i, acc_t* w) {
          load_row(x + i * r, r, w);
          rot_row_forward(w, s.data(), R, c.side, int(r), int(BS), w + r);
          store_row(w + r, r, h + i * r);
        });
      });
      return;
    }
    case Core::dplr: {
      const std::vector<acc_t> s = scales<acc_t>(c, nullptr);
      const acc_t* A = static_cast<const acc_t*>(c.A);
      const std::vector<acc_t> Bt = transposed(static_cast<const acc_t*>(c.B), r, k);
      for_rows<acc_t>(n, 2 * r * k + r, 2 * r, [&](int64_t i, acc_t* w) {
        load_row(x + i * r, r, w);
        dplr_row_forward_cpu(w, s.data(), A, Bt.data(), coeff, r, k, w + r);
        store_row(w + r, r, h + i * r);
      });
      return;
    }
    case Core::ablate: {
      const acc_t *S = static_cast<const acc_t*>(c.S), *a = static_cast<const acc_t*>(c.a);
      const std::vector<acc_t> Ct = transposed(static_cast<const acc_t*>(c.A), r, k);
      for_rows<acc_t>(n, 2 * r * k + r, 2 * r + k, [&](int64_t i, acc_t* w) {
        load_row(x + i * r, r, w);
        ablate_row_forward_cpu(w, S, Ct.data(), a, coeff, r, k, w + 2 * r, w + r);
        store_row(w + r, r, h + i * r);
      });
      return;
    }
  }
}

template <typename T>
void backward_typed(const CoreCall& call) {
  using acc_t = acc_of<T>;
  const CoreParams& c = call.core;
  const int64_t n = call.n, r = c.r, k = c.k;
  const T *x = static_cast<const T*>(call.p), *dy = static_cast<const T*>(call.grad_h);
  T* dp = static_cast<T*>(call.dp);
  acc_t* tot = static_cast<acc_t*>(call.dparams);
  const acc_t coeff = acc_t(c.coeff);
  switch (c.core) {
    case Core::gain: {
      std::vector<acc_t> dscale;
      const std::vector<acc_t> s = scales<acc_t>(c, &dscale);
      reduce_rows<acc_t>(n, 2 * r, r, 3 * r, tot, [&](int64_t i, acc_t* w, acc_t* part) {
        load_row(x + i * r, r, w);
        load_row(dy + i * r, r, w + r);
        gain_row_backward(w + r, w, s.data(), int(r), w + 2 * r, part);
        store_row(w + 2 * r, r, dp + i * r);
      });
      for (int64_t j = 0; j < r; ++j) tot[j] *= dscale[j];
      return;
    }
    case Core::rot: {
      const std::vector<acc_t> s = scales<acc_t>(c, nullptr);
      const acc_t* R = static_cast<const acc_t*>(c.R);
      const int64_t n_rot = c.side == kRotNone ? 0 : r * c.bs;  // partial layout: ds (r) | dR (n_blocks bs bs)
      with_block_size(c.bs, [&](auto BS) {
        reduce_rows<acc_t>(n, 3 * r * c.bs + 2 * r, r + n_rot, 3 * r + c.bs, tot, [&](int64_t i, acc_t* w, acc_t* part) {
          load_row(x + i * r, r, w);
          load_row(dy + i * r, r, w + r);
          rot_row_backward(w + r, w, s.data(), R, c.side, int(r), int(BS), w + 3 * r, w + 2 * r, part, part + r);
          store_row(w + 2 * r, r, dp + i * r);
        });
      });
      for (int64_t j = 0; j < r; ++j) tot[j] *= coeff;
      return;
    }
    case Core::dplr: {
      std::vector<acc_t> dscale;
      const std::vector<acc_t> s = scales<acc_t>(c, &dscale);
      const acc_t* A = static_cast<const acc_t*>(c.A);
      const std::vector<acc_t> Bt = transposed(static_cast<const acc_t*>(c.B), r, k);
      // partial layout: ds (r) | dA (k r) | dB^T (k r)
      std::vector<acc_t> all(static_cast<size_t>(r + 2 * k * r));
      reduce_rows<acc_t>(n, 5 * r * k + 2 * r, r + 2 * k * r, 3 * r, all.data(), [&](int64_t i, acc_t* w, acc_t* part) {
        load_row(x + i * r, r, w);
        load_row(dy + i * r, r, w + r);
        dplr_row_backward_cpu(w + r, w, s.data(), A, Bt.data(), coeff, r, k, w + 2 * r, part, part + r, part + r + k * r);
        store_row(w + 2 * r, r, dp + i * r);
      });
      for (int64_t j = 0; j < r; ++j) tot[j] = all[j] * dscale[j];
      std::copy(all.begin() + r, all.begin() + r + k * r, tot + r);
      const acc_t* dBt = all.data() + r + k * r;
      for (int64_t j = 0; j < r; ++j)
        for (int64_t m = 0; m < k; ++m) tot[r + k * r + j * k + m] = dBt[m * r + j];
      return;
    }
    case Core::ablate: {
      const acc_t *S = static_cast<const acc_t*>(c.S), *a = static_cast<const acc_t*>(c.a);
      const std::vector<acc_t> Ct = transposed(static_cast<const acc_t*>(c.A), r, k);
      // partial layout: dC^T (k r) | da (k)
      std::vector<acc_t> all(static_cast<size_t>(r * k + k));
      reduce_rows<acc_t>(n, 6 * r * k + 2 * r, r * k + k, 4 * r, all.data(), [&](int64_t i, acc_t* w, acc_t* part) {
        load_row(x + i * r, r, w);
        load_row(dy + i * r, r, w + r);
        ablate_row_backward_cpu(w + r, w, S, Ct.data(), a, coeff, r, k, w + 3 * r, w + 2 * r, part, part + r * k);
        store_row(w + 2 * r, r, dp + i * r);
      });
      for (int64_t j = 0; j < r; ++j)
        for (int64_t m = 0; m < k; ++m) tot[j * k + m] = all[m * r + j];
      std::copy(all.begin() + r * k, all.end(), tot + r * k);
      return;
    }
  }
}

template <typename Fn>
void dispatch_dtype(DType d, const Fn& fn) {
  switch (d) {
    case DType::f32: return fn(float{});
    case DType::f64: return fn(double{});
    case DType::f16: return fn(c10::Half{});
    case DType::bf16: return fn(c10::BFloat16{});
  }
  throw std::invalid_argument("antipasto_ext CPU kernels: unknown dtype code " + std::to_string(int(d)));
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
        cayley_block_forward(t + b * m, int(BS), acc_t(c.a_lim), acc_t(c.coeff), work.data(), R + b * bs * bs);
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
        cayley_block_backward(G + b * bs * bs, R + b * bs * bs, t + b * m, int(BS), acc_t(c.a_lim), acc_t(c.coeff),
                              work.data(), dt + b * m);
    });
  });
}

void check_cayley(const char* op, const CayleyCall& c) {
  if (c.bs < 2 || c.bs > kMaxCayleyBlock)
    throw std::invalid_argument(std::string("antipasto_ext ") + op + ": block size " + std::to_string(c.bs) +
                                " not in 2.." + std::to_string(kMaxCayleyBlock));
}

}  // namespace

const char* kernel_set_name() { return "native"; }

void core_forward(const CoreCall& c, void*) {
  dispatch_dtype(c.dtype, [&](auto tag) { forward_typed<decltype(tag)>(c); });
}

void core_backward(const CoreCall& c, void*) {
  dispatch_dtype(c.dtype, [&](auto tag) { backward_typed<decltype(tag)>(c); });
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
