// Per-row math of the gain and rot cores (docs/SPEC.md §1, §2) on one token row, in the accumulation
// type: the C++ CPU kernel set runs it one call per row, and the CUDA core kernels (cores.cuh) mirror it
// expression for expression, so the two agree bit for bit without FMA contraction. Forward functions write
// h; backward functions write dp and add the row's contribution to the parameter-gradient partial sums,
// which callers reduce in a fixed order.
#pragma once

#include "csrc/kernels/api.h"
#include "csrc/kernels/math.h"

namespace ax {

// gain (antipasto / corda): h = p * s
template <typename acc_t>
inline void gain_row_forward(const acc_t* p, const acc_t* s, int r, acc_t* h) {
  for (int j = 0; j < r; ++j) h[j] = p[j] * s[j];
}
template <typename acc_t>
inline void gain_row_backward(const acc_t* dh, const acc_t* p, const acc_t* s, int r, acc_t* dp, acc_t* ds) {
  for (int j = 0; j < r; ++j) {
    dp[j] = dh[j] * s[j];
    ds[j] += dh[j] * p[j];
  }
}

// rot: V side  h = (p_b R_b^T) * s;  U side  h_b = (p * s)_b R_b;  none  h = p * s.  R (n_blocks, bs, bs).
template <typename acc_t>
inline void rot_row_forward(const acc_t* p, const acc_t* s, const acc_t* R, int side, int r, int bs, acc_t* h) {
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
inline void rot_row_backward(const acc_t* dh, const acc_t* p, const acc_t* s, const acc_t* R, int side, int r,
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

}  // namespace ax
