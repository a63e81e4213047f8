// Per-element, per-row and per-block math of the AntiPaSTO cores (SPEC §1-5), shared by the
// C++ CPU kernels, the CUDA kernels and their CPU emulation. Torch-free: raw pointers and sizes.
// Every function works in the accumulation type `acc_t` (float, or double for float64 inputs).
#pragma once

#if defined(__CUDACC__) || defined(AX_EMULATE_CUDA)
#include "emu/portability.cuh"
#endif
#ifndef AX_HD
#define AX_HD
#endif

#include <cmath>

namespace ax {

// Largest block size the Cayley kernels support (workspace bound for per-thread arrays).
constexpr int kMaxCayleyBlock = 64;

// An adapter index clamped to a bank of n: indices are checked where they are set; the clamp keeps one changed
// since from reading outside the stacked parameters.
AX_HD inline long long clamp_adapter_index(long long a, long long n) { return a < 0 ? 0 : a >= n ? n - 1 : a; }

template <typename acc_t>
AX_HD inline acc_t elu(acc_t z) { return z > acc_t(0) ? z : exp(z) - acc_t(1); }

template <typename acc_t>
AX_HD inline acc_t elu_grad(acc_t z) { return z > acc_t(0) ? acc_t(1) : exp(z); }

// Gain of antipasto / corda / dplr: s_eff = S * (1 + ELU(coeff * g')), g' = min(g, 0) when
// suppress_only. d s_eff / d g is returned through `dscale_dg` (0 where the clamp cuts g off; at
// g == 0 the gradient passes, so suppress_only can leave its zero init).
template <typename acc_t>
AX_HD inline acc_t gain_scale(acc_t s, acc_t g, acc_t coeff, bool suppress_only, acc_t* dscale_dg) {
  const bool clamped = suppress_only && g > acc_t(0);
  const acc_t gg = clamped ? acc_t(0) : g;
  const acc_t z = coeff * gg;
  if (dscale_dg) *dscale_dg = clamped ? acc_t(0) : s * elu_grad(z) * coeff;
  return s * (acc_t(1) + elu(z));
}

// Index of (i, j), i < j, in the row-major strict upper triangle of a bs x bs matrix
// (torch.triu_indices(bs, bs, offset=1) order).
AX_HD inline int triu_index(int i, int j, int bs) { return i * bs - i * (i + 1) / 2 + (j - i - 1); }

// Clamped skew matrix of one block: A = a_lim * tanh(((T - T^T) / 2) / a_lim), T = triu(t).
// Writes A (bs x bs, row-major).
template <typename acc_t, typename param_t>
AX_HD inline void cayley_skew(const param_t* t, int bs, acc_t a_lim, acc_t* A) {
  for (int i = 0; i < bs; ++i) {
    A[i * bs + i] = acc_t(0);
    for (int j = i + 1; j < bs; ++j) {
      const acc_t a = a_lim * tanh((acc_t(t[triu_index(i, j, bs)]) / acc_t(2)) / a_lim);
      A[i * bs + j] = a;
      A[j * bs + i] = -a;
    }
  }
}

// In-place inverse of M (bs x bs) by Gauss-Jordan elimination without pivoting, writing M^-1
// into `inv`. Stable here: M = I - X with X skew, so sym(M) = I and every singular value of M
// is >= 1 (SPEC §2) -- no pivot can be small, so there is nothing to check or report.
template <typename acc_t>
AX_HD inline void invert_unpivoted(acc_t* M, int bs, acc_t* inv) {
  for (int i = 0; i < bs * bs; ++i) inv[i] = acc_t(0);
  for (int i = 0; i < bs; ++i) inv[i * bs + i] = acc_t(1);
  for (int c = 0; c < bs; ++c) {
    const acc_t rp = acc_t(1) / M[c * bs + c];
    for (int j = 0; j < bs; ++j) {
      M[c * bs + j] *= rp;
      inv[c * bs + j] *= rp;
    }
    for (int i = 0; i < bs; ++i) {
      if (i == c) continue;
      const acc_t f = M[i * bs + c];
      if (f == acc_t(0)) continue;
      for (int j = 0; j < bs; ++j) {
        M[i * bs + j] -= f * M[c * bs + j];
        inv[i * bs + j] -= f * inv[c * bs + j];
      }
    }
  }
}

// Forward of one Cayley block: R = (I - X)^-1 (I + X) = 2 (I - X)^-1 - I, X = coeff * A / 2.
// `work` holds 2 * bs * bs accumulators.
template <typename acc_t, typename param_t, typename out_t>
AX_HD inline void cayley_block_forward(const param_t* t, int bs, acc_t a_lim, acc_t coeff, acc_t* work,
                                       out_t* R) {
  acc_t* M = work;
  acc_t* inv = work + bs * bs;
  cayley_skew(t, bs, a_lim, M);
  for (int i = 0; i < bs * bs; ++i) M[i] = -coeff * M[i] / acc_t(2);
  for (int i = 0; i < bs; ++i) M[i * bs + i] += acc_t(1);
  invert_unpivoted(M, bs, inv);
  for (int i = 0; i < bs; ++i)
    for (int j = 0; j < bs; ++j) R[i * bs + j] = out_t(acc_t(2) * inv[i * bs + j] - (i == j ? acc_t(1) : acc_t(0)));
}

// Backward of one Cayley block. With Minv = (R + I) / 2 (no second solve):
//   dX = 2 Minv^T G Minv^T, dA = coeff / 2 * dX * (1 - tanh^2), dT_ij = (dA_ij - dA_ji) / 2.
// `work` holds 3 * bs * bs accumulators; writes bs*(bs-1)/2 entries of dt.
template <typename acc_t, typename param_t, typename grad_t>
AX_HD inline void cayley_block_backward(const grad_t* G, const param_t* R, const param_t* t, int bs, acc_t a_lim,
                                        acc_t coeff, acc_t* work, param_t* dt) {
  acc_t* Minv = work;
  acc_t* tmp = work + bs * bs;
  acc_t* dX = work + 2 * bs * bs;
  for (int i = 0; i < bs; ++i)
    for (int j = 0; j < bs; ++j) Minv[i * bs + j] = (acc_t(R[i * bs + j]) + (i == j ? acc_t(1) : acc_t(0))) / acc_t(2);
  // tmp = Minv^T G
  for (int i = 0; i < bs; ++i)
    for (int j = 0; j < bs; ++j) {
      acc_t s = 0;
      for (int k = 0; k < bs; ++k) s += Minv[k * bs + i] * acc_t(G[k * bs + j]);
      tmp[i * bs + j] = s;
    }
  // dX = 2 tmp Minv^T
  for (int i = 0; i < bs; ++i)
    for (int j = 0; j < bs; ++j) {
      acc_t s = 0;
      for (int k = 0; k < bs; ++k) s += tmp[i * bs + k] * Minv[j * bs + k];
      dX[i * bs + j] = acc_t(2) * s;
    }
  for (int i = 0; i < bs; ++i)
    for (int j = i + 1; j < bs; ++j) {
      const acc_t th = tanh((acc_t(t[triu_index(i, j, bs)]) / acc_t(2)) / a_lim);
      const acc_t dtanh = acc_t(1) - th * th;  // symmetric: tanh is odd, the skew entries share it
      const acc_t dA_ij = coeff / acc_t(2) * dX[i * bs + j] * dtanh;
      const acc_t dA_ji = coeff / acc_t(2) * dX[j * bs + i] * dtanh;
      dt[triu_index(i, j, bs)] = param_t((dA_ij - dA_ji) / acc_t(2));
    }
}

}  // namespace ax
