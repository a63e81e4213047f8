// Tests of the CUDA emulator: barriers, shared memory, launch checks,
// divergence detection, indexing, cp.async, fp16/bf16, threads, timing.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "emu/testing.h"
#include "emu/tests/emu_check_kernels.cuh"
#include "emu/tests/emu_test_kernels.cuh"

using ax_emu::EmulationError;
using namespace emu_test;

namespace {

std::vector<float> iota_floats(size_t n, float start = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + static_cast<float>(i % 97);
  return v;
}

struct SeedGuard {
  ~SeedGuard() { ax_emu::clear_seed(); ax_emu::clear_shuffle(); }
};

}  // namespace

AX_TEST(reduction_exact) {
  SeedGuard g;
  const int n = 256 * 7 - 5;
  std::vector<float> in = iota_floats(n);
  for (uint64_t seed : {1ull, 2ull, 3ull, 12345ull}) {
    ax_emu::set_seed(seed);
    std::vector<float> out(7, -1.0f);
    AX_LAUNCH((block_sum_kernel<true>), 7, 256, 0, nullptr, in.data(), out.data(), n);
    AX_CHECK_LAUNCH();
    for (int b = 0; b < 7; ++b) {
      double ref = 0;
      for (int i = b * 256; i < std::min(n, (b + 1) * 256); ++i) ref += in[i];
      AX_CHECK_EQ(static_cast<double>(out[b]), ref);
    }
  }
}

AX_TEST(reduction_without_barrier_is_detected) {
  SeedGuard g;
  const int n = 256 * 4;
  std::vector<float> in = iota_floats(n);
  int wrong_seeds = 0;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    ax_emu::set_seed(seed);
    std::vector<float> out(4, -1.0f);
    AX_LAUNCH((block_sum_kernel<false>), 4, 256, 0, nullptr, in.data(), out.data(), n);
    bool wrong = false;
    for (int b = 0; b < 4; ++b) {
      double ref = 0;
      for (int i = b * 256; i < (b + 1) * 256; ++i) ref += in[i];
      if (!(static_cast<double>(out[b]) == ref)) wrong = true;
    }
    wrong_seeds += wrong;
  }
  std::printf("    barrier-less reduction wrong for %d of 8 seeds\n", wrong_seeds);
  AX_CHECK(wrong_seeds >= 1);
}

AX_TEST(unwritten_shared_is_nan) {
  const int threads = 64, blocks = 3;
  std::vector<float> f(threads * blocks, 0.f);
  std::vector<int> i(threads * blocks, 0);
  AX_LAUNCH(unwritten_smem_kernel, blocks, threads, 0, nullptr, f.data(), i.data(), 16);
  for (int t = 0; t < threads; ++t) {
    if (t < 16) {
      AX_CHECK_EQ(f[t], 1.0f + t);
      AX_CHECK_EQ(i[t], t);
    } else {
      AX_CHECK(std::isnan(f[t]));
      AX_CHECK_EQ(i[t], -1);
    }
  }
  // Blocks 1, 2 never write: shared memory is re-poisoned for every block.
  for (int t = threads; t < threads * blocks; ++t) {
    AX_CHECK(std::isnan(f[t]));
    AX_CHECK_EQ(i[t], -1);
  }
}

AX_TEST(dynamic_shared_sized_per_launch) {
  for (unsigned nb : {32u, 96u, 256u}) {
    const unsigned blocks = 3;
    std::vector<float> in = iota_floats(2 * nb * blocks);
    std::vector<float> out(nb * blocks, 0.f);
    AX_LAUNCH(dynamic_smem_kernel, blocks, nb, 2 * nb * sizeof(float), nullptr, in.data(), out.data());
    for (unsigned b = 0; b < blocks; ++b)
      for (unsigned t = 0; t < nb; ++t)
        AX_CHECK_EQ(out[b * nb + t], in[b * 2 * nb + t] + in[b * 2 * nb + 2 * nb - 1 - t]);
  }
  // Dynamic shared memory is poisoned per block as well.
  std::vector<float> out(64, 0.f);
  AX_LAUNCH(dynamic_smem_poison_kernel, 2, 32, 32 * sizeof(float), nullptr, out.data());
  for (int t = 0; t < 32; ++t) AX_CHECK_EQ(out[t], 7.0f);
  for (int t = 32; t < 64; ++t) AX_CHECK(std::isnan(out[t]));
}

AX_TEST(bad_launch_config) {
  std::vector<float> out(4096, 0.f);
  float* o = out.data();
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, 1, 0, 0, nullptr, o), "invalid configuration");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, 1, 1025, 0, nullptr, o), "1025");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, 1, dim3(32, 32, 2), 0, nullptr, o), "2048");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, 1, dim3(1, 1, 65), 0, nullptr, o), "invalid configuration");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, 0, 32, 0, nullptr, o), "grid dimension is 0");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, dim3(1, 65536), 32, 0, nullptr, o), "65536");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, dim3(1, 1, 70000), 32, 0, nullptr, o), "grid dimensions");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(dynamic_smem_kernel, 1, 32, 300 * 1024, nullptr, o, o), "shared memory");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(too_much_static_smem_kernel, 1, 32, 0, nullptr, o), "48 KiB",
                  "too_much_static_smem_kernel", "emu_test_kernels.cuh:");
  // A valid launch right after the failures still works.
  AX_LAUNCH(no_arg_kernel, 1, dim3(32, 32, 1), 0, nullptr);  // 1024 threads: ok
  AX_LAUNCH(no_arg_kernel, dim3(1, 65535, 1), 1, 0, nullptr);  // grid.y = 65535: ok
}

AX_TEST(divergent_barrier_exit_throws) {
  std::vector<float> out(64, 0.f);
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_exit_kernel, 2, 64, 0, nullptr, out.data()),
                  "divergent_barrier_exit_kernel", "__syncthreads", "16 of 64", "exited", "emu_test_kernels.cuh:",
                  "block (");
}

AX_TEST(divergent_barrier_sites_throws) {
  std::vector<float> out(64, 0.f);
  // Two different call sites of __syncthreads() (dispatched with shuffling on and off).
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, 1, 64, 0, nullptr, out.data()),
                  "different barriers", "emu_test_kernels.cuh:");
  ax_emu::set_shuffle(false);
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_barrier_sites_kernel, 1, 64, 0, nullptr, out.data()),
                  "different barriers");
  ax_emu::clear_shuffle();
}

AX_TEST(divergent_warp_collectives_throw) {
  std::vector<float> out(64, 0.f);
  std::vector<unsigned> u(64, 0);
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_shfl_exit_kernel, 1, 64, 0, nullptr, out.data()),
                  "__shfl_sync", "exited");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(divergent_collectives_kernel, 1, 32, 0, nullptr, u.data()),
                  "warp divergence");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(shfl_vs_barrier_deadlock_kernel, 1, 64, 0, nullptr, out.data()),
                  "deadlock", "__shfl_down_sync", "__syncthreads");
}

AX_TEST(indexing_2d) {
  const dim3 grid(3, 2, 2), block(8, 4, 2);
  const unsigned W = 24, H = 8, D = 4;
  std::vector<int> out(W * H * D, -7);
  std::vector<unsigned> ballots(2, 12345u);
  AX_LAUNCH(indexing_kernel, grid, block, 0, nullptr, out.data(), ballots.data());
  for (unsigned z = 0; z < D; ++z)
    for (unsigned y = 0; y < H; ++y)
      for (unsigned x = 0; x < W; ++x)
        AX_CHECK_EQ(out[(z * H + y) * W + x], static_cast<int>(x + 1000 * y + 1000000 * z));
  // Warps are consecutive 32 threads in x + y*bx + z*bx*by order.
  AX_CHECK_EQ(ballots[0], 0x0000FF00u);
  AX_CHECK_EQ(ballots[1], 0u);
}

AX_TEST(barrier_count_and_atomics) {
  std::vector<int> out(8, -5);
  float fsum = 0.f;
  int imax = -1;
  AX_LAUNCH(barrier_reduce_atomic_kernel, 2, 96, 0, nullptr, out.data(), &fsum, reinterpret_cast<unsigned*>(&imax));
  for (int b = 0; b < 2; ++b) {
    AX_CHECK_EQ(out[b * 4 + 0], 24);
    AX_CHECK_EQ(out[b * 4 + 1], 1);
    AX_CHECK_EQ(out[b * 4 + 2], 1);
    AX_CHECK_EQ(out[b * 4 + 3], 0);
  }
  AX_CHECK_EQ(fsum, 192.0f);
  AX_CHECK_EQ(imax, 95);
}

AX_TEST(cp_async_deferred) {
  std::vector<float> src(128);
  for (int i = 0; i < 128; ++i) src[i] = 10.0f + i;
  std::vector<float> early(16, 0.f), mid(32, 0.f), late(16, 0.f);
  AX_LAUNCH(cp_async_kernel, 1, 16, 0, nullptr, src.data(), early.data(), mid.data(), late.data());
  for (unsigned t = 0; t < 16; ++t) {
    AX_CHECK(std::isnan(early[t]));                          // read before the wait
    AX_CHECK_EQ(mid[2 * t], src[4 * ((t + 1) % 16)]);       // group 0 complete after wait<1>
    AX_CHECK(std::isnan(mid[2 * t + 1]));                    // group 1 still in flight
    AX_CHECK_EQ(late[t], src[64 + 4 * ((t + 3) % 16)]);     // all complete after wait<0>
  }
}

AX_TEST(cp_async_zfill) {
  std::vector<float> src(32), out(32, -1.f);
  for (int i = 0; i < 32; ++i) src[i] = 1.0f + i;
  AX_LAUNCH(cp_async_zfill_kernel, 1, 8, 0, nullptr, src.data(), out.data());
  for (int i = 0; i < 32; ++i) {
    const int j = (i + 4) % 32;  // element of s read by out[i]
    AX_CHECK_EQ(out[i], (j / 4) % 2 == 0 ? src[j] : 0.0f);
  }
}

AX_TEST(template_kernel_and_params_by_value) {
  const int n = 1000;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) {
    x[i] = 0.5f * i;
    y[i] = 1.0f;
  }
  AX_LAUNCH((axpy_kernel<float, 4>), (n + 4 * 64 - 1) / (4 * 64), 64, 0, nullptr, x.data(), y.data(), 2.0f, n);
  for (int i = 0; i < n; ++i) AX_CHECK_EQ(y[i], 2.0f * x[i] + 1.0f);
  AX_LAUNCH(no_arg_kernel, 2, 33, 0, nullptr);
  ax_emu::launch(no_arg_kernel, dim3(1), dim3(1), 0);
}

AX_TEST(fp16_bf16_host_conversions) {
  AX_CHECK_EQ(__half2float(__float2half(1.5f)), 1.5f);
  AX_CHECK_EQ(__half2float(__float2half(65504.0f)), 65504.0f);
  AX_CHECK_EQ(__half2float(__float2half(0.1f)), 0.0999755859375f);
  AX_CHECK_EQ(__bfloat162float(__float2bfloat16(1.5f)), 1.5f);
  AX_CHECK_EQ(__bfloat162float(__float2bfloat16(3.14159265f)), 3.140625f);
  AX_CHECK_EQ(__bfloat162float(__float2bfloat16(1.00390625f)), 1.0f);    // tie -> even
  AX_CHECK_EQ(__bfloat162float(__float2bfloat16(1.01171875f)), 1.015625f);  // tie -> even (up)
  AX_CHECK(std::isnan(__bfloat162float(__float2bfloat16(NAN))));
  // The emulator's own decoders (used by mma) agree with cuda_fp16/bf16.
  for (float v : {0.f, -0.f, 1.f, -2.5f, 6.1e-5f, 3.0e-7f, 65504.f, 1234.5f}) {
    __half h = __float2half(v);
    uint16_t hb;
    std::memcpy(&hb, &h, 2);
    AX_CHECK_EQ(ax_emu::detail::f16_bits_to_float(hb), __half2float(h));
    __nv_bfloat16 b = __float2bfloat16(v);
    uint16_t bb;
    std::memcpy(&bb, &b, 2);
    AX_CHECK_EQ(ax_emu::detail::bf16_bits_to_float(bb), __bfloat162float(b));
  }
  // ... and in (emulated) device code.
  std::vector<float> in = {1.5f, 0.1f, 3.14159265f, -7.0f};
  std::vector<__half> h(4);
  std::vector<__nv_bfloat16> b(4);
  std::vector<float> back(8);
  AX_LAUNCH(half_convert_kernel, 1, 4, 0, nullptr, in.data(), h.data(), b.data(), back.data());
  for (int t = 0; t < 4; ++t) {
    AX_CHECK_EQ(back[2 * t], __half2float(__float2half(in[t])));
    AX_CHECK_EQ(back[2 * t + 1], __bfloat162float(__float2bfloat16(in[t])));
  }
}

AX_TEST(concurrent_host_threads) {
  auto worker = [](int id, int* errors) {
    const int n = 256 * 5;
    std::vector<float> in = iota_floats(n, static_cast<float>(id));
    for (int rep = 0; rep < 10; ++rep) {
      std::vector<float> out(5, 0.f);
      AX_LAUNCH((block_sum_kernel<true>), 5, 256, 0, nullptr, in.data(), out.data(), n);
      for (int b = 0; b < 5; ++b) {
        double ref = 0;
        for (int i = b * 256; i < (b + 1) * 256; ++i) ref += in[i];
        if (static_cast<double>(out[b]) != ref) ++*errors;
      }
      if (rep == 3) {  // an error in one thread does not disturb the other
        std::vector<float> o(64);
        try {
          AX_LAUNCH(divergent_barrier_exit_kernel, 1, 64, 0, nullptr, o.data());
          ++*errors;
        } catch (const EmulationError&) {
        }
      }
    }
  };
  int e1 = 0, e2 = 0;
  std::thread t1(worker, 1, &e1), t2(worker, 2, &e2);
  t1.join();
  t2.join();
  AX_CHECK_EQ(e1, 0);
  AX_CHECK_EQ(e2, 0);
}

AX_TEST(not_in_kernel) {
  AX_CHECK_THROWS(EmulationError, (void)threadIdx.x, "outside");
  AX_CHECK_THROWS(EmulationError, __syncthreads(), "outside");
}

AX_TEST(timing_256x100_10_barriers) {
  const int blocks = 100, threads = 256;
  std::vector<float> out(blocks * threads, 0.f);
  AX_LAUNCH(barrier_heavy_kernel, blocks, threads, 0, nullptr, out.data());  // warm-up (stacks)
  auto t0 = std::chrono::steady_clock::now();
  AX_LAUNCH(barrier_heavy_kernel, blocks, threads, 0, nullptr, out.data());
  auto t1 = std::chrono::steady_clock::now();
  double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  std::printf("    100 blocks x 256 threads x 10 barriers: %.1f ms\n", ms);
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < threads; ++t) {
      float ref = 0;
      for (int r = 0; r < 10; ++r) ref += static_cast<float>((t + r + 1) % 256);
      AX_CHECK_EQ(out[b * threads + t], ref);
    }
  AX_CHECK(ms < 5000.0);  // generous: sanitizer builds are slow
}

AX_TEST(launch_above_launch_bounds_throws) {
  std::vector<float> out(256);
  AX_LAUNCH(emu_check::bounded_kernel, 1, emu_check::kBoundedThreads, 0, nullptr, out.data());
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(emu_check::bounded_kernel, 1, 128, 0, nullptr, out.data()),
                  "exceeds the kernel's __launch_bounds__ of 64", "bounded_kernel");
}

AX_TEST(dynamic_smem_above_48k_needs_the_opt_in) {
  std::vector<float> out(1);
  const int n = 64 * 1024 / 4;
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(emu_check::big_smem_kernel, 1, 128, n * 4, nullptr, out.data(), n),
                  "without the opt-in", "set_max_dynamic_smem");
  ax::set_max_dynamic_smem(emu_check::big_smem_kernel, size_t(n) * 4);
  AX_LAUNCH(emu_check::big_smem_kernel, 1, 128, n * 4, nullptr, out.data(), n);
  AX_CHECK_EQ(out[0], float(n - 1));
}

AX_TEST(launch_on_another_stream_throws) {
  std::vector<float> out(64);
  static char op_stream;
  ax_emu::set_current_stream(&op_stream);
  AX_LAUNCH(emu_check::bounded_kernel, 1, 64, 0, &op_stream, out.data());
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(emu_check::bounded_kernel, 1, 64, 0, nullptr, out.data()),
                  "not the current stream");
  ax_emu::set_current_stream(nullptr);
}

#if !AX_EMU_ASAN
AX_TEST(out_of_bounds_writes_reported_at_their_launch) {  // under ASan, ASan reports them itself
  ax_emu::DeviceBuffer<float> out(40, "out");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(emu_check::off_by_one_kernel, 2, 32, 0, nullptr, out.data(), 40),
                  "out-of-bounds global write", "byte 0 past its end", "'out'");
  AX_CHECK_THROWS(EmulationError, AX_LAUNCH(emu_check::shared_oob_kernel, 1, 32, 0, nullptr, out.data(), 9),
                  "out-of-bounds shared-memory write", "past the end of AX_SHARED 'tile'");
}
#endif

int main(int argc, char** argv) { return ax_test::run_main(argc, argv); }
