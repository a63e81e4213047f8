// Per-row float64-capable oracles of the low-rank cores (docs/SPEC.md §3, §5) for the torch-free kernel tests:
// the arithmetic the CUDA core kernels (csrc/kernels/cores.cuh) perform, expression for expression, so the
// emulated kernels must match them bit for bit. (The C++ CPU kernel set uses its own SIMD order.)
#pragma once

#include "csrc/kernels/math.h"

namespace ax {

// dplr: t = p A^T (k), h = p * s + coeff * t B^T.  A (k, r), B (r, k), row-major.
template <typename acc_t>
inline void dplr_row_forward(const acc_t* p, const acc_t* s, const acc_t* A, const acc_t* B, acc_t coeff, int r,
                             int k, acc_t* t, acc_t* h) {
  for (int m = 0; m < k; ++m) {
    acc_t acc = 0;
    for (int j = 0; j < r; ++j) acc += p[j] * A[m * r + j];
    t[m] = acc;
  }
  for (int j = 0; j < r; ++j) {
    acc_t acc = 0;
    for (int m = 0; m < k; ++m) acc += t[m] * B[j * k + m];
    h[j] = p[j] * s[j] + coeff * acc;
  }
}
// Backward: u = dh B (k); dp = dh * s + coeff * u A; ds += dh * p; dA += coeff u^T p; dB += coeff dh^T t.
template <typename acc_t>
inline void dplr_row_backward(const acc_t* dh, const acc_t* p, const acc_t* s, const acc_t* A, const acc_t* B,
                              acc_t coeff, int r, int k, acc_t* t, acc_t* u, acc_t* dp, acc_t* ds, acc_t* dA,
                              acc_t* dB) {
  for (int m = 0; m < k; ++m) {
    acc_t at = 0, au = 0;
    for (int j = 0; j < r; ++j) {
      at += p[j] * A[m * r + j];
      au += dh[j] * B[j * k + m];
    }
    t[m] = at;
    u[m] = coeff * au;
  }
  for (int j = 0; j < r; ++j) {
    acc_t acc = 0;
    for (int m = 0; m < k; ++m) {
      acc += u[m] * A[m * r + j];
      dA[m * r + j] += u[m] * p[j];
      dB[j * k + m] += coeff * dh[j] * t[m];
    }
    dp[j] = dh[j] * s[j] + acc;
    ds[j] += dh[j] * p[j];
  }
}

// A sum over j < r as `lanes` threads of a kernel take it: thread l applies add(its sum, j) for j = l, l + lanes, ...
// in order from 0, then the threads add their sums in an xor butterfly (offsets lanes / 2, ..., 1). lanes 1: in order.
template <typename acc_t, typename Add>
inline acc_t split_sum(int r, int lanes, Add add) {
  acc_t part[32], next[32];
  for (int l = 0; l < lanes; ++l) part[l] = 0;
  for (int j = 0; j < r; ++j) add(part[j % lanes], j);
  for (int off = lanes / 2; off > 0; off /= 2) {
    for (int l = 0; l < lanes; ++l) next[l] = part[l] + part[l ^ off];
    for (int l = 0; l < lanes; ++l) part[l] = next[l];
  }
  return part[0];
}

// ablate: h0 = p * S; v = h0 C (k); h = h0 - C (coeff * a * v).  C (r, k) row-major. The length-r sums of v (and of
// the backward's dw) are split over `lanes` threads (the kernels' ablate_lanes(k)).
template <typename acc_t>
inline void ablate_row_forward(const acc_t* p, const acc_t* S, const acc_t* C, const acc_t* a, acc_t coeff, int r,
                               int k, acc_t* v, acc_t* h, int lanes = 1) {
  for (int m = 0; m < k; ++m)
    v[m] = split_sum<acc_t>(r, lanes, [&](acc_t& sum, int j) { sum += p[j] * S[j] * C[j * k + m]; });
  for (int m = 0; m < k; ++m) v[m] *= coeff * a[m];
  for (int j = 0; j < r; ++j) {
    acc_t acc = 0;
    for (int m = 0; m < k; ++m) acc += C[j * k + m] * v[m];
    h[j] = p[j] * S[j] - acc;
  }
}
// Backward with w = coeff a v: dw = -C^T dh; dC += -dh w^T + h0 dv^T; dv = coeff a dw; da += coeff v dw;
// dp = (dh + C dv) * S.  `v`, `dv` are k accumulators of scratch.
template <typename acc_t>
inline void ablate_row_backward(const acc_t* dh, const acc_t* p, const acc_t* S, const acc_t* C, const acc_t* a,
                                acc_t coeff, int r, int k, acc_t* v, acc_t* dv, acc_t* dp, acc_t* dC,
                                acc_t* da, int lanes = 1) {
  for (int m = 0; m < k; ++m) {
    v[m] = split_sum<acc_t>(r, lanes, [&](acc_t& sum, int j) { sum += p[j] * S[j] * C[j * k + m]; });
    dv[m] = split_sum<acc_t>(r, lanes, [&](acc_t& sum, int j) { sum -= dh[j] * C[j * k + m]; });  // dw for now
  }
  for (int m = 0; m < k; ++m) {
    const acc_t dw = dv[m];
    da[m] += coeff * v[m] * dw;
    v[m] *= coeff * a[m];    // w
    dv[m] = coeff * a[m] * dw;
  }
  for (int j = 0; j < r; ++j) {
    const acc_t h0 = p[j] * S[j];
    acc_t acc = 0;
    for (int m = 0; m < k; ++m) {
      acc += C[j * k + m] * dv[m];
      dC[j * k + m] += h0 * dv[m] - dh[j] * v[m];
    }
    dp[j] = (dh[j] + acc) * S[j];
  }
}

}  // namespace ax
