// Per-row math of the r-space cores (SPEC §1-5) on one token row, in the accumulation type.
// Shared by the C++ CPU kernels (one call per row) and usable by device code for decode-sized
// inputs. Forward functions write h; backward functions write dp and add the row's contribution
// to the parameter-gradient partial sums, which callers reduce in a fixed order.
#pragma once

#include "csrc/kernels/math.h"

namespace ax {

// gain (antipasto / corda): h = p * s
template <typename acc_t>
AX_HD inline void gain_row_forward(const acc_t* p, const acc_t* s, int r, acc_t* h) {
  for (int j = 0; j < r; ++j) h[j] = p[j] * s[j];
}
template <typename acc_t>
AX_HD inline void gain_row_backward(const acc_t* dh, const acc_t* p, const acc_t* s, int r, acc_t* dp, acc_t* ds) {
  for (int j = 0; j < r; ++j) {
    dp[j] = dh[j] * s[j];
    ds[j] += dh[j] * p[j];
  }
}

// dplr: t = p A^T (k), h = p * s + coeff * t B^T.  A (k, r), B (r, k), row-major.
template <typename acc_t>
AX_HD inline void dplr_row_forward(const acc_t* p, const acc_t* s, const acc_t* A, const acc_t* B, acc_t coeff, int r,
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
AX_HD inline void dplr_row_backward(const acc_t* dh, const acc_t* p, const acc_t* s, const acc_t* A, const acc_t* B,
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

// Rotation sides of antipasto_rot.
enum RotSide : int { kRotNone = 0, kRotV = 1, kRotU = 2 };

// rot: V side  h = (p_b R_b^T) * s;  U side  h_b = (p * s)_b R_b;  none  h = p * s.  R (n_blocks, bs, bs).
template <typename acc_t>
AX_HD inline void rot_row_forward(const acc_t* p, const acc_t* s, const acc_t* R, int side, int r, int bs, acc_t* h) {
  if (side == kRotNone) {
    gain_row_forward(p, s, r, h);
    return;
  }
  for (int b0 = 0; b0 < r; b0 += bs) {
    const acc_t* Rb = R + (b0 / bs) * bs * bs;
    for (int i = 0; i < bs; ++i) {
      acc_t acc = 0;
      if (side == kRotV) {
        for (int j = 0; j < bs; ++j) acc += Rb[i * bs + j] * p[b0 + j];
        h[b0 + i] = acc * s[b0 + i];
      } else {
        for (int j = 0; j < bs; ++j) acc += p[b0 + j] * s[b0 + j] * Rb[j * bs + i];
        h[b0 + i] = acc;
      }
    }
  }
}
// Backward; `q` is bs accumulators of scratch. ds (r) and dR (n_blocks, bs, bs) are partial sums.
template <typename acc_t>
AX_HD inline void rot_row_backward(const acc_t* dh, const acc_t* p, const acc_t* s, const acc_t* R, int side, int r,
                                   int bs, acc_t* q, acc_t* dp, acc_t* ds, acc_t* dR) {
  if (side == kRotNone) {
    gain_row_backward(dh, p, s, r, dp, ds);
    return;
  }
  for (int b0 = 0; b0 < r; b0 += bs) {
    const acc_t* Rb = R + (b0 / bs) * bs * bs;
    acc_t* dRb = dR + (b0 / bs) * bs * bs;
    if (side == kRotV) {
      // q = rotated p (p'), dp' = dh * s
      for (int i = 0; i < bs; ++i) {
        acc_t acc = 0;
        for (int j = 0; j < bs; ++j) acc += Rb[i * bs + j] * p[b0 + j];
        q[i] = acc;
      }
      for (int i = 0; i < bs; ++i) {
        const acc_t dpi = dh[b0 + i] * s[b0 + i];
        ds[b0 + i] += dh[b0 + i] * q[i];
        for (int j = 0; j < bs; ++j) dRb[i * bs + j] += dpi * p[b0 + j];
      }
      for (int j = 0; j < bs; ++j) {
        acc_t acc = 0;
        for (int i = 0; i < bs; ++i) acc += Rb[i * bs + j] * dh[b0 + i] * s[b0 + i];
        dp[b0 + j] = acc;
      }
    } else {
      // h0 = p * s; dh0_i = sum_j R_ij dh_j; dR_ij += h0_i dh_j
      for (int i = 0; i < bs; ++i) {
        const acc_t h0 = p[b0 + i] * s[b0 + i];
        acc_t acc = 0;
        for (int j = 0; j < bs; ++j) {
          acc += Rb[i * bs + j] * dh[b0 + j];
          dRb[i * bs + j] += h0 * dh[b0 + j];
        }
        dp[b0 + i] = acc * s[b0 + i];
        ds[b0 + i] += acc * p[b0 + i];
      }
    }
  }
}

// ablate: h0 = p * S; v = h0 C (k); h = h0 - C (coeff * a * v).  C (r, k) row-major.
template <typename acc_t>
AX_HD inline void ablate_row_forward(const acc_t* p, const acc_t* S, const acc_t* C, const acc_t* a, acc_t coeff, int r,
                                     int k, acc_t* v, acc_t* h) {
  for (int m = 0; m < k; ++m) v[m] = 0;
  for (int j = 0; j < r; ++j) {
    const acc_t h0 = p[j] * S[j];
    for (int m = 0; m < k; ++m) v[m] += h0 * C[j * k + m];
  }
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
AX_HD inline void ablate_row_backward(const acc_t* dh, const acc_t* p, const acc_t* S, const acc_t* C, const acc_t* a,
                                      acc_t coeff, int r, int k, acc_t* v, acc_t* dv, acc_t* dp, acc_t* dC,
                                      acc_t* da) {
  for (int m = 0; m < k; ++m) v[m] = dv[m] = 0;
  for (int j = 0; j < r; ++j) {
    const acc_t h0 = p[j] * S[j];
    for (int m = 0; m < k; ++m) {
      v[m] += h0 * C[j * k + m];
      dv[m] -= dh[j] * C[j * k + m];  // dw for now
    }
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
