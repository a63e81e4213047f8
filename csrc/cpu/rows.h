// Row loops of the C++ CPU kernels (csrc/cpu/kernels.cpp, csrc/cores/*.cpp): one parallel pass over the (n, r)
// rows; parameter gradients reduced in fixed chunks of core_rows_per_chunk(n) rows, summed in chunk order (the
// same bits for any thread count, and the chunking of the CUDA kernels). Raw pointers; ATen's thread pool and
// c10's 16-bit types.
#pragma once

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

namespace ax {
namespace cpu {

template <typename T>
using acc_of = std::conditional_t<std::is_same<T, double>::value, double, float>;

// Items per task so that a task carries enough work to pay for a thread-pool hand-off (~10 us): small calls
// (decode, a few Cayley blocks) run inline on the calling thread.
inline int64_t grain(int64_t cost_per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(cost_per_item, 1));
}

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
  const int64_t chunk = core_rows_per_chunk(n), n_chunks = core_chunks_per_entry(n);
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

// Dot product with fixed independent lanes and axpy: both vectorise, in an order independent of the threads.
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

// (r, k) row-major -> (k, r).
template <typename acc_t>
std::vector<acc_t> transposed(const acc_t* M, int64_t r, int64_t k) {
  std::vector<acc_t> t(static_cast<size_t>(r * k));
  for (int64_t j = 0; j < r; ++j)
    for (int64_t m = 0; m < k; ++m) t[m * r + j] = M[j * k + m];
  return t;
}

// The gain s = S (1 + ELU(coeff g')) (r), with d s / d g when dscale is given.
template <typename acc_t>
std::vector<acc_t> gain_scales(const CoreParams& c, std::vector<acc_t>* dscale) {
  const acc_t *S = static_cast<const acc_t*>(c.S), *g = static_cast<const acc_t*>(c.g);
  std::vector<acc_t> s(static_cast<size_t>(c.r));
  if (dscale) dscale->assign(static_cast<size_t>(c.r), acc_t(0));
  for (int64_t j = 0; j < c.r; ++j)
    s[j] = gain_scale<acc_t>(S[j], g[j], acc_t(c.coeff), c.suppress_only, dscale ? dscale->data() + j : nullptr);
  return s;
}

// Calls fn(bs) with bs a compile-time constant for the common small block sizes, so per-block loops unroll; a
// runtime int otherwise.
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

// Calls fn(T{}) with T the activation type of `d`.
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

// A core's forward on the CPU, one call per row in the accumulation type: make(acc_t{}) returns the row function
// h_row(p, h, scratch) (p and h r accumulators, `n_scratch` of scratch); `row_cost` sizes the parallel tasks.
template <typename Make>
void forward_rows(const CoreCall& call, int64_t row_cost, int64_t n_scratch, const Make& make) {
  dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_of<T>;
    const int64_t r = call.core.r;
    const T* x = static_cast<const T*>(call.p);
    T* h = static_cast<T*>(call.h);
    const auto row = make(acc_t{});
    for_rows<acc_t>(call.n, row_cost, 2 * r + n_scratch, [&](int64_t i, acc_t* w) {
      load_row(x + i * r, r, w);
      row(w, w + r, w + 2 * r);
      store_row(w + r, r, h + i * r);
    });
  });
}

// A core's backward on the CPU: make(acc_t{}) returns the pair (row, finish): row(p, dh, dp, scratch, partial)
// writes the row's dp and adds its contribution to the n_partial partial sums (reduced in fixed chunks), and
// finish(total, dparams) turns their sum into the core's dparams (chain-rule factors, layouts).
template <typename Make>
void backward_rows(const CoreCall& call, int64_t row_cost, int64_t n_partial, int64_t n_scratch, const Make& make) {
  dispatch_dtype(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = acc_of<T>;
    const int64_t r = call.core.r;
    const T *x = static_cast<const T*>(call.p), *dy = static_cast<const T*>(call.grad_h);
    T* dp = static_cast<T*>(call.dp);
    const auto [row, finish] = make(acc_t{});
    std::vector<acc_t> total(static_cast<size_t>(n_partial));
    reduce_rows<acc_t>(call.n, row_cost, n_partial, 3 * r + n_scratch, total.data(), [&](int64_t i, acc_t* w, acc_t* part) {
      load_row(x + i * r, r, w);
      load_row(dy + i * r, r, w + r);
      row(w, w + r, w + 2 * r, w + 3 * r, part);
      store_row(w + 2 * r, r, dp + i * r);
    });
    finish(total.data(), static_cast<acc_t*>(call.dparams));
  });
}

}  // namespace cpu
}  // namespace ax
