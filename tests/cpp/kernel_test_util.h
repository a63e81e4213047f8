// Helpers of the torch-free kernel tests (tests/cpp/test_{cores,cayley,project}.cpp): device buffers, the op
// stream, dtype conversions, random data, bitwise comparison, the reference row reduction. Include after the
// launch_*.cuh header of the family under test.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "csrc/kernels/api.h"
#include "emu/portability.cuh"
#include "emu/testing.h"

namespace kt {

namespace K = ax::emu_impl;
using ax::DType;

struct SeedGuard {
  ~SeedGuard() { ax_emu::clear_seed(); }
};

// The stream every API call gets (and the emulator's current stream): a launch on another one fails.
void* test_stream() {
  static char token;
  ax_emu::set_current_stream(&token);
  return &token;
}

template <typename T>
using Dev = ax_emu::DeviceBuffer<T>;
template <typename T>
T* ptr_or_null(Dev<T>& d) {
  return d.size() ? d.data() : nullptr;
}

template <typename T>
using acc_of = std::conditional_t<std::is_same<T, double>::value, double, float>;

template <typename T>
DType dtype_of() {
  if (std::is_same<T, float>::value) return DType::f32;
  if (std::is_same<T, double>::value) return DType::f64;
  if (std::is_same<T, __half>::value) return DType::f16;
  return DType::bf16;
}
template <typename T>
const char* name_of() {
  if (std::is_same<T, float>::value) return "f32";
  if (std::is_same<T, double>::value) return "f64";
  if (std::is_same<T, __half>::value) return "f16";
  return "bf16";
}

template <typename A, typename T>
A to_acc(T v) {
  if constexpr (std::is_same<T, __half>::value) return __half2float(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __bfloat162float(v);
  else return static_cast<A>(v);
}
template <typename T, typename A>
T from_acc(A v) {
  if constexpr (std::is_same<T, __half>::value) return __float2half_rn(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __float2bfloat16_rn(v);
  else return static_cast<T>(v);
}

template <typename T>
std::vector<T> randn(size_t n, std::mt19937_64& rng, double scale = 1.0, double shift = 0.0) {
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = from_acc<T>(static_cast<acc_of<T>>(shift + scale * d(rng)));
  return v;
}
// Bitwise equality (NaN == NaN when the bits agree).
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b, const char* what) {
  if (a.size() != b.size()) {
    std::printf("    %s: size %zu vs %zu\n", what, a.size(), b.size());
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      std::printf("    %s: first difference at %zu: %.9g vs %.9g\n", what, i, double(to_acc<double>(a[i])),
                  double(to_acc<double>(b[i])));
      return false;
    }
  return true;
}

// The row reduction of every kernel set: partials per chunk of core_rows_per_chunk(n) rows, in row order,
// then summed over chunks in order.
template <typename A, typename RowFn>
std::vector<A> reduce_rows(int64_t n, int64_t n_part, const RowFn& row_fn) {
  const int64_t chunk = ax::core_rows_per_chunk(n), n_chunks = ax::core_chunks_per_entry(n);
  std::vector<A> partial(static_cast<size_t>(n_chunks * n_part), A(0)), total(static_cast<size_t>(n_part), A(0));
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) row_fn(i, partial.data() + c * n_part);
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t j = 0; j < n_part; ++j) total[j] += partial[c * n_part + j];
  return total;
}

template <typename T>
std::vector<acc_of<T>> row_acc(const std::vector<T>& x, int64_t i, int64_t r) {
  std::vector<acc_of<T>> v(static_cast<size_t>(r));
  for (int64_t j = 0; j < r; ++j) v[j] = to_acc<acc_of<T>>(x[i * r + j]);
  return v;
}
template <typename T, typename A>
void store_row(const std::vector<A>& v, std::vector<T>& x, int64_t i, int64_t r) {
  for (int64_t j = 0; j < r; ++j) x[i * r + j] = from_acc<T>(v[j]);
}

// The memory-metrics rows (checked builds) of the kernels whose name contains `kernel`, summed as kernel_metrics.md
// weights them: shared wavefronts and their conflict-free count, global sectors and their minimum.
struct MetricTotals {
  double wavefronts = 0, ideal_wavefronts = 0, sectors = 0, min_sectors = 0;
};
inline MetricTotals metric_totals(const std::vector<ax_emu::MetricRow>& rows, const std::string& kernel) {
  MetricTotals t;
  for (const ax_emu::MetricRow& m : rows) {
    if (m.kernel.find(kernel) == std::string::npos) continue;
    if (m.shared) {
      t.wavefronts += m.wavefronts;
      t.ideal_wavefronts += m.ideal_wavefronts;
    } else {
      t.sectors += m.sectors;
      t.min_sectors += m.min_sectors;
    }
  }
  return t;
}
// Checks that a kernel's accesses (all its rows) are within the memory targets: bank-conflict factor <= 1.25 and
// global sector efficiency >= 85%, weighted by count as in kernel_metrics.md; prints both.
inline void check_memory_targets(const std::vector<ax_emu::MetricRow>& rows, const char* kernel) {
  const MetricTotals t = metric_totals(rows, kernel);
  std::printf("    %s: bank-conflict factor %.3f, sector efficiency %.3f\n", kernel, t.wavefronts / t.ideal_wavefronts,
              t.min_sectors / t.sectors);
  AX_CHECK(t.ideal_wavefronts > 0 && t.wavefronts <= 1.25 * t.ideal_wavefronts);
  AX_CHECK(t.sectors > 0 && t.min_sectors >= 0.85 * t.sectors);
}

}  // namespace kt
