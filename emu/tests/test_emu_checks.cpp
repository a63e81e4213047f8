// Tests of the emulator's checked build (emu/checker.h): every check fires on its planted bug,
// names both source sites where there are two, and stays quiet on the correct twin; the memory metrics
// count known access patterns. Built only as a checked executable (CMakeLists.txt).
#include <cstdint>
#include <string>
#include <vector>

#include "emu/testing.h"
#include "emu/tests/emu_check_kernels.cuh"

using ax_emu::DeviceBuffer;
using ax_emu::EmulationError;
using namespace emu_check;

static_assert(ax_emu::checked_build(), "test_emu_checks must be compiled with -fsanitize=thread (CMakeLists.txt)");

namespace {

constexpr const char* kKernels = "emu_check_kernels.cuh:";

// The message names the kernel source at least `sites` times (both accesses of a race).
size_t count_sites(const std::string& msg) {
  size_t n = 0;
  for (size_t p = msg.find(kKernels); p != std::string::npos; p = msg.find(kKernels, p + 1)) ++n;
  return n;
}

template <class Launch>
std::string error_of(Launch&& launch) {
  try {
    launch();
  } catch (const EmulationError& e) {
    std::printf("    (expected error) %s\n", e.what());
    return e.what();
  }
  return "";
}

struct SeedGuard {
  ~SeedGuard() { ax_emu::clear_seed(); }
};

}  // namespace

AX_TEST(shared_write_write_race_names_both_sites) {
  DeviceBuffer<float> out(64, "out");
  const std::string e = error_of([&] { AX_LAUNCH((shared_write_write_kernel<false>), 1, 64, 0, nullptr, out.data()); });
  AX_CHECK(e.find("shared-memory race") != std::string::npos);
  AX_CHECK(e.find("AX_SHARED 's'") != std::string::npos);
  AX_CHECK(count_sites(e) >= 2);
  AX_LAUNCH((shared_write_write_kernel<true>), 1, 64, 0, nullptr, out.data());
}

AX_TEST(shared_read_then_write_race) {
  DeviceBuffer<float> out(128, "out");
  const std::string e = error_of([&] { AX_LAUNCH((shared_read_write_kernel<false>), 1, 64, 0, nullptr, out.data()); });
  AX_CHECK(e.find("shared-memory race") != std::string::npos);
  AX_CHECK(count_sites(e) >= 2);
  AX_LAUNCH((shared_read_write_kernel<true>), 1, 64, 0, nullptr, out.data());
  const std::vector<float> h = out.to_host();
  AX_CHECK_EQ(h[3], 1.0f);
  AX_CHECK_EQ(h[64 + 3], 2.0f);
}

AX_TEST(warp_synchronous_code_needs_a_warp_sync) {
  DeviceBuffer<float> out(128, "out");
  const std::string e = error_of([&] { AX_LAUNCH((warp_sync_kernel<0>), 1, 64, 0, nullptr, out.data()); });
  AX_CHECK(e.find("shared-memory race") != std::string::npos);
  const std::string e3 = error_of([&] { AX_LAUNCH((warp_sync_kernel<3>), 1, 64, 0, nullptr, out.data()); });
  AX_CHECK(e3.find("shared-memory race") != std::string::npos);  // the __syncwarp leaves lane 1 out
  AX_LAUNCH((warp_sync_kernel<1>), 1, 64, 0, nullptr, out.data());  // __syncwarp
  AX_LAUNCH((warp_sync_kernel<2>), 1, 64, 0, nullptr, out.data());  // a shuffle joins the lanes too
}

AX_TEST(cp_async_in_flight_and_refill_races) {
  SeedGuard guard;
  const int steps = 6;
  std::vector<float> host(size_t(steps) * 512);
  for (size_t i = 0; i < host.size(); ++i) host[i] = float(i % 251);
  DeviceBuffer<float> src(host, "src"), out(128, "out");
  for (uint64_t seed : {1ull, 2ull, 3ull}) {
    ax_emu::set_seed(seed);
    AX_LAUNCH((cp_async_pipeline_kernel<0>), 1, 128, 0, nullptr, src.data(), out.data(), steps);
    const std::vector<float> h = out.to_host();
    float ref = 0.f;
    for (int s = 0; s < steps; ++s) ref += host[size_t(s) * 512 + size_t((5 + 32) % 128) * 4];
    AX_CHECK_EQ(h[5], ref);
    const std::string e1 = error_of([&] { AX_LAUNCH((cp_async_pipeline_kernel<1>), 1, 128, 0, nullptr, src.data(), out.data(), steps); });
    AX_CHECK(e1.find("still in flight") != std::string::npos);
    const std::string e2 = error_of([&] { AX_LAUNCH((cp_async_pipeline_kernel<2>), 1, 128, 0, nullptr, src.data(), out.data(), steps); });
    AX_CHECK(e2.find("still in flight") != std::string::npos || e2.find("shared-memory race") != std::string::npos);
    AX_CHECK(count_sites(e2) >= 2);
  }
}

AX_TEST(races_between_ctas) {
  SeedGuard guard;
  DeviceBuffer<float> out(std::vector<float>(8, 0.f), "out");
  for (uint64_t seed : {1ull, 2ull}) {
    ax_emu::set_seed(seed);
    const std::string w = error_of([&] { AX_LAUNCH((cta_kernel<true, false>), 8, 32, 0, nullptr, out.data()); });
    AX_CHECK(w.find("race between CTAs") != std::string::npos);
    AX_CHECK(count_sites(w) >= 2);
    const std::string r = error_of([&] { AX_LAUNCH((cta_kernel<false, true>), 8, 32, 0, nullptr, out.data()); });
    AX_CHECK(r.find("race between CTAs") != std::string::npos);
  }
  AX_LAUNCH((cta_kernel<false, false>), 8, 32, 0, nullptr, out.data());
  AX_LAUNCH((cta_kernel<false, false>), 8, 32, 0, nullptr, out.data());  // a later launch may rewrite
}

AX_TEST(uninitialised_global_reads) {
  DeviceBuffer<float> in(40, "in"), out(40, "out");
  const std::string e = error_of([&] { AX_LAUNCH(copy_kernel, 2, 32, 0, nullptr, in.data(), out.data(), 40); });
  AX_CHECK(e.find("uninitialised global memory") != std::string::npos);
  AX_CHECK(e.find("'in'") != std::string::npos);
  ax_emu::mark_initialized(in.data(), 40 * sizeof(float));
  AX_LAUNCH(copy_kernel, 2, 32, 0, nullptr, in.data(), out.data(), 40);
  AX_LAUNCH(copy_kernel, 2, 32, 0, nullptr, out.data(), in.data(), 40);  // written by the kernel: initialised
  ax_emu::poison(out.data(), 40 * sizeof(float));  // a launch output again: uninitialised
  const std::string e2 = error_of([&] { AX_LAUNCH(copy_kernel, 2, 32, 0, nullptr, out.data(), in.data(), 40); });
  AX_CHECK(e2.find("uninitialised global memory") != std::string::npos);
}

AX_TEST(out_of_bounds_accesses_at_the_access) {
  DeviceBuffer<float> out(40, "out");
  const std::string g = error_of([&] { AX_LAUNCH(off_by_one_kernel, 2, 32, 0, nullptr, out.data(), 40); });
  AX_CHECK(g.find("out-of-bounds global write") != std::string::npos);
  AX_CHECK(g.find("byte 160 of device buffer 'out'") != std::string::npos);
  AX_CHECK(count_sites(g) >= 1);
  const std::string s = error_of([&] { AX_LAUNCH(shared_oob_kernel, 1, 32, 0, nullptr, out.data(), 8); });
  AX_CHECK(s.find("out-of-bounds shared-memory write") != std::string::npos);
  AX_CHECK(s.find("AX_SHARED 'tile'") != std::string::npos);
}

AX_TEST(misaligned_vector_accesses) {
  std::vector<float> host(16, 1.0f);
  DeviceBuffer<float> in(host, "in"), out(1, "out");
  AX_LAUNCH(vector_access_kernel, 1, 1, 0, nullptr, in.data(), out.data(), 16, 4);  // aligned: runs
  const std::string g = error_of([&] { AX_LAUNCH(vector_access_kernel, 1, 1, 0, nullptr, in.data(), out.data(), 8, 4); });
  AX_CHECK(g.find("misaligned 16-byte global read") != std::string::npos);
  const std::string s = error_of([&] { AX_LAUNCH(vector_access_kernel, 1, 1, 0, nullptr, in.data(), out.data(), 16, 2); });
  AX_CHECK(s.find("misaligned 16-byte shared write") != std::string::npos);
}

AX_TEST(memory_metrics_of_known_patterns) {
  std::vector<float> host(32 * 32);
  DeviceBuffer<float> g(host, "g"), out(32, "out");
  auto run = [&](int stride) {
    ax_emu::start_metrics();
    AX_LAUNCH(metrics_kernel, 1, 32, 0, nullptr, g.data(), out.data(), stride);
    return ax_emu::stop_metrics();
  };
  auto find = [](const std::vector<ax_emu::MetricRow>& rows, bool shared, uint32_t bytes, int nth = 0) {
    for (const auto& r : rows)
      if (r.shared == shared && !r.write && int(r.bytes_per_lane + 0.5) == int(bytes) && nth-- == 0) return r;
    return ax_emu::MetricRow{};
  };
  for (int stride : {1, 2, 32}) {
    const auto rows = run(stride);
    for (const auto& r : rows)
      std::printf("    stride %d: %s %s %s %.0f B/lane x %llu: wavefronts %.0f / %.0f, sectors %.0f / %.0f\n", stride,
                  r.site.c_str(), r.shared ? "shared" : "global", r.write ? "st" : "ld", r.bytes_per_lane,
                  (unsigned long long)r.accesses, r.wavefronts, r.ideal_wavefronts, r.sectors, r.min_sectors);
    const auto s4 = find(rows, true, 4), s16 = find(rows, true, 16), g4 = find(rows, false, 4);
    AX_CHECK_EQ(s4.accesses, 1ull);
    AX_CHECK_EQ(s4.wavefronts / s4.ideal_wavefronts, double(stride));  // stride 2: 2-way, 32: 32-way
    AX_CHECK(s4.site.find("emu_check_kernels.cuh") != std::string::npos);
    AX_CHECK_EQ(s16.wavefronts, 4.0);  // 16 bytes per lane: 4 conflict-free quarter-warp phases
    AX_CHECK_EQ(s16.ideal_wavefronts, 4.0);
    AX_CHECK_EQ(g4.sectors, double(stride == 1 ? 4 : stride == 2 ? 8 : 32));
    AX_CHECK_EQ(g4.min_sectors, 4.0);
  }
}

int main(int argc, char** argv) { return ax_test::run_main(argc, argv); }
