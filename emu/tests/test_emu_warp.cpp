// Tests of the emulated warp collectives and tensor-core wrappers.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "emu/testing.h"
#include "emu/tests/emu_test_kernels.cuh"

using ax_emu::EmulationError;
using namespace emu_test;

AX_TEST(shuffles_and_votes) {
  const int threads = 64;
  std::vector<float> f(threads * 8, -1.f);
  std::vector<int> i(threads * 8, -9);
  std::vector<double> d(threads, -1.0);
  AX_LAUNCH(warp_ops_kernel, 1, threads, 0, nullptr, f.data(), i.data(), d.data());
  unsigned every3 = 0;
  for (int l = 0; l < 32; l += 3) every3 |= 1u << l;
  for (int t = 0; t < threads; ++t) {
    const int l = t % 32;
    const float* ft = &f[t * 8];
    const int* it = &i[t * 8];
    AX_CHECK_EQ(ft[0], 528.0f);
    if (l == 0) AX_CHECK_EQ(ft[1], 528.0f);
    AX_CHECK_EQ(ft[2], 100.0f + (l + 3 < 32 ? l + 3 : l));
    AX_CHECK_EQ(ft[3], 100.0f + (l >= 3 ? l - 3 : l));
    AX_CHECK_EQ(ft[4], 105.0f);
    AX_CHECK_EQ(ft[5], 100.0f + (l & ~7) + 2);
    AX_CHECK_EQ(ft[6], 100.0f + ((l - 1) >= (l & ~15) ? l - 1 : l));
    AX_CHECK_EQ(ft[7], 100.0f + ((l & 8) ? l - 8 : l));
    AX_CHECK_EQ(static_cast<unsigned>(it[0]), every3);
    AX_CHECK_EQ(it[1], 1);
    AX_CHECK_EQ(it[2], 0);
    AX_CHECK_EQ(it[3], 1);
    AX_CHECK_EQ(it[4], 0);
    AX_CHECK_EQ(it[5], -93);
    AX_CHECK_EQ(it[6], (l ^ 31) * 7);
    AX_CHECK_EQ(it[7], l < 16 ? 0xFF00 : -9);
    AX_CHECK_EQ(d[t], 0.5 + (l + 16 < 32 ? l + 16 : l));
  }
}

AX_TEST(partial_warp_reads_poison) {
  std::vector<float> out(48, 0.f);
  AX_LAUNCH(partial_warp_kernel, 1, 48, 0, nullptr, out.data());
  for (int t = 0; t < 48; ++t) {
    const int l = t % 32;
    if (t < 32) {
      AX_CHECK_EQ(out[t], 1.0f + (l + 8 < 32 ? l + 8 : l));
    } else if (l < 8) {
      AX_CHECK_EQ(out[t], 1.0f + l + 8);
    } else {
      AX_CHECK(std::isnan(out[t]));  // source lane does not exist
    }
  }
}

namespace {

uint16_t to_bits(float v, bool bf16) {
  uint16_t r;
  if (bf16) {
    __nv_bfloat16 b = __float2bfloat16(v);
    std::memcpy(&r, &b, 2);
  } else {
    __half h = __float2half(v);
    std::memcpy(&r, &h, 2);
  }
  return r;
}

// Fragments packed per PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type".
void run_mma_case(bool bf16, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-8, 8);
  float A[16][16], B[16][8], C[16][8];
  for (auto& r : A)
    for (float& v : r) v = 0.5f * dist(rng);
  for (auto& r : B)
    for (float& v : r) v = 0.25f * dist(rng);
  for (auto& r : C)
    for (float& v : r) v = 1.0f * dist(rng);
  std::vector<uint32_t> af(32 * 4, 0), bfr(32 * 2, 0);
  std::vector<float> cf(32 * 4), df(32 * 4, -1234.f);
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, tq = lane & 3;
    for (int i = 0; i < 8; ++i) {
      const int row = g + (((i >> 1) & 1) ? 8 : 0);
      const int col = tq * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      af[lane * 4 + i / 2] |= static_cast<uint32_t>(to_bits(A[row][col], bf16)) << (16 * (i & 1));
    }
    for (int i = 0; i < 4; ++i) {
      const int k = tq * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      bfr[lane * 2 + i / 2] |= static_cast<uint32_t>(to_bits(B[k][g], bf16)) << (16 * (i & 1));
    }
    for (int i = 0; i < 4; ++i) cf[lane * 4 + i] = C[g + (i >= 2 ? 8 : 0)][tq * 2 + (i & 1)];
  }
  if (bf16)
    AX_LAUNCH((mma_kernel<true>), 1, 32, 0, nullptr, af.data(), bfr.data(), cf.data(), df.data());
  else
    AX_LAUNCH((mma_kernel<false>), 1, 32, 0, nullptr, af.data(), bfr.data(), cf.data(), df.data());
  int bad = 0;
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, tq = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int m = g + (i >= 2 ? 8 : 0), n = tq * 2 + (i & 1);
      double ref = C[m][n];
      for (int k = 0; k < 16; ++k) ref += static_cast<double>(A[m][k]) * B[k][n];
      if (static_cast<double>(df[lane * 4 + i]) != ref) ++bad;
    }
  }
  AX_CHECK_EQ(bad, 0);
}

}  // namespace

AX_TEST(mma_bf16_matches_naive) {
  for (uint32_t s = 1; s <= 3; ++s) run_mma_case(true, s);
}

AX_TEST(mma_f16_matches_naive) {
  for (uint32_t s = 1; s <= 3; ++s) run_mma_case(false, s);
}

AX_TEST(ldmatrix_matches_mma_fragment_layout) {
  std::vector<uint16_t> A(256), B(256);
  for (int i = 0; i < 256; ++i) {
    A[i] = static_cast<uint16_t>(0x1000 + i);
    B[i] = static_cast<uint16_t>(0x2000 + i);
  }
  std::vector<uint32_t> a_out(128, 0), b_out(128, 0);
  AX_LAUNCH(ldmatrix_kernel, 1, 32, 0, nullptr, A.data(), B.data(), a_out.data(), b_out.data());
  auto a_at = [&](int r, int c) { return static_cast<uint32_t>(A[r * 16 + c]); };
  auto b_at = [&](int k, int n) { return static_cast<uint32_t>(B[k * 16 + n]); };
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, tq = lane & 3;
    // A fragment (same as mma's): a0a1 (g, 2t), a2a3 (g+8, 2t), a4a5 (g, 2t+8), a6a7 (g+8, 2t+8)
    AX_CHECK_EQ(a_out[lane * 4 + 0], a_at(g, 2 * tq) | a_at(g, 2 * tq + 1) << 16);
    AX_CHECK_EQ(a_out[lane * 4 + 1], a_at(g + 8, 2 * tq) | a_at(g + 8, 2 * tq + 1) << 16);
    AX_CHECK_EQ(a_out[lane * 4 + 2], a_at(g, 2 * tq + 8) | a_at(g, 2 * tq + 9) << 16);
    AX_CHECK_EQ(a_out[lane * 4 + 3], a_at(g + 8, 2 * tq + 8) | a_at(g + 8, 2 * tq + 9) << 16);
    // B fragments (.trans from row-major k x n): b0b1 (k=2t,2t+1; n=g), b2b3 (k+8)
    for (int nt = 0; nt < 2; ++nt) {
      const int n = g + 8 * nt;
      AX_CHECK_EQ(b_out[lane * 4 + 2 * nt + 0], b_at(2 * tq, n) | b_at(2 * tq + 1, n) << 16);
      AX_CHECK_EQ(b_out[lane * 4 + 2 * nt + 1], b_at(2 * tq + 8, n) | b_at(2 * tq + 9, n) << 16);
    }
  }
}

AX_TEST(ldmatrix_cp_async_mma_tile) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> dist(-6, 6);
  std::vector<float> A(256), B(256);
  std::vector<__nv_bfloat16> Ab(256), Bb(256);
  for (int i = 0; i < 256; ++i) {
    A[i] = 0.5f * dist(rng);
    B[i] = 0.5f * dist(rng);
    Ab[i] = __float2bfloat16(A[i]);
    Bb[i] = __float2bfloat16(B[i]);
  }
  std::vector<float> D(256, -1.f);
  AX_LAUNCH(ldmatrix_mma_kernel, 1, 32, 0, nullptr, Ab.data(), Bb.data(), D.data());
  int bad = 0;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double ref = 0;
      for (int k = 0; k < 16; ++k) ref += static_cast<double>(A[m * 16 + k]) * B[k * 16 + n];
      if (static_cast<double>(D[m * 16 + n]) != ref) ++bad;
    }
  AX_CHECK_EQ(bad, 0);
}

AX_TEST(mma_requires_full_warp) {
  std::vector<float> out(64, 0.f);
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(half_warp_mma_kernel, 1, 32, 0, nullptr, out.data()),
                  "mma_m16n8k16_bf16", "exited");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(half_warp_mma_kernel, 1, 16, 0, nullptr, out.data()), "full warp");
}

int main(int argc, char** argv) { return ax_test::run_main(argc, argv); }
