// Kernel tests (torch-free, ctest) of the block Cayley kernels (csrc/kernels/cayley.cuh): the kernels of csrc/kernels/ run through the CUDA emulator
// via the kernel API (csrc/kernels/api.h, namespace ax::emu_impl), against the per-block math of csrc/kernels/math.h,
// which they mirror operation for operation: results must agree bit for bit. Built twice (CMakeLists.txt):
// under ASan + UBSan, and as the emulator's checked build (every memory access of kernel code checked:
// shared-memory and inter-CTA races, cp.async in flight, uninitialised and out-of-bounds global accesses;
// emu/checker.h). All device memory is ax_emu::DeviceBuffer: inputs initialised, outputs and workspaces
// poisoned and uninitialised, so an entry a kernel forgets to write, or a partial it reads before writing,
// fails; launches must use the stream the API was given.
#include "csrc/kernels/launch_cayley.cuh"
#include "tests/cpp/kernel_test_util.h"

using namespace kt;

namespace {
// per > 0: per-block coefficients (CayleyCall::coeffs), block b at coeffs[b / per], random.
template <typename A>
void check_cayley(int bs, int64_t nb, double coeff, uint64_t seed, int64_t per = 0) {
  std::mt19937_64 rng(seed);
  const int64_t m = int64_t(bs) * (bs - 1) / 2;
  const std::vector<A> t = randn<A>(static_cast<size_t>(nb * m), rng, 2.0), G = randn<A>(static_cast<size_t>(nb * bs * bs), rng);
  const std::vector<A> coeffs = per > 0 ? randn<A>(static_cast<size_t>((nb + per - 1) / per), rng) : std::vector<A>();
  const double a_lim = 2.0 * std::tan(0.5 / 2.0);
  std::vector<A> R_ref(static_cast<size_t>(nb * bs * bs)), dt_ref(static_cast<size_t>(nb * m)), work(static_cast<size_t>(3 * bs * bs));
  for (int64_t b = 0; b < nb; ++b) {
    const A c = per > 0 ? coeffs[b / per] : A(coeff);
    ax::cayley_block_forward(t.data() + b * m, bs, A(a_lim), c, work.data(), R_ref.data() + b * bs * bs);
    ax::cayley_block_backward(G.data() + b * bs * bs, R_ref.data() + b * bs * bs, t.data() + b * m, bs, A(a_lim), c,
                              work.data(), dt_ref.data() + b * m);
  }
  Dev<A> t_d(t, "t"), G_d(G, "grad_R"), R_d(R_ref.size(), "R"), dt_d(dt_ref.size(), "dt"), c_d(coeffs, "coeffs");
  const bool f64 = std::is_same<A, double>::value;
  ax::CayleyCall call;
  call.f64 = f64;
  call.n_blocks = nb;
  call.bs = bs;
  call.a_lim = a_lim;
  call.coeff = coeff;
  if (per > 0) {
    call.coeffs = c_d.data();
    call.blocks_per_coeff = per;
  }
  call.t = t_d.data();
  call.R = R_d.data();
  K::cayley_forward(call, test_stream());
  call.grad_R = G_d.data();
  call.dt = dt_d.data();
  K::cayley_backward(call, test_stream());
  const std::vector<A> R = R_d.to_host(), dt = dt_d.to_host();
  const std::string tag = std::string(f64 ? "f64" : "f32") + " bs=" + std::to_string(bs);
  AX_CHECK(same_bits(R, R_ref, ("R " + tag).c_str()));
  AX_CHECK(same_bits(dt, dt_ref, ("dt " + tag).c_str()));
  // R orthogonal
  double err = 0;
  for (int64_t b = 0; b < nb; ++b)
    for (int i = 0; i < bs; ++i)
      for (int j = 0; j < bs; ++j) {
        double s = 0;
        for (int q = 0; q < bs; ++q) s += double(R[b * bs * bs + q * bs + i]) * double(R[b * bs * bs + q * bs + j]);
        err = std::max(err, std::fabs(s - (i == j ? 1.0 : 0.0)));
      }
  AX_CHECK(err < (f64 ? 1e-12 : 1e-5));
}
}  // namespace

AX_TEST(cayley_register_path_bit_exact) {  // bs <= 8: one thread per block; 70 blocks = 2 CTAs
  for (int bs = 2; bs <= 8; ++bs) {
    check_cayley<float>(bs, 70, 1.0, uint64_t(bs));
    check_cayley<double>(bs, 70, -0.7, uint64_t(bs));
  }
}

// The register path in the emulator's memory model (checked build only): the staged slices move whole sectors and
// the threads' reads and writes of their staged blocks are within the 1.25 bank-conflict target.
AX_TEST(cayley_register_path_moves_whole_sectors) {
  if (!ax_emu::checked_build()) return;
  ax_emu::start_metrics();
  for (int bs : {2, 4, 8}) {
    check_cayley<float>(bs, 200, 1.0, uint64_t(bs));
    check_cayley<double>(bs, 100, -0.7, uint64_t(bs));
  }
  const std::vector<ax_emu::MetricRow> rows = ax_emu::stop_metrics();
  for (const char* kernel : {"cayley_forward_small_kernel", "cayley_backward_small_kernel"})
    check_memory_targets(rows, kernel);
}

// The shared-memory path in the emulator's memory model (checked build only, float32): t, Minv and G staged by
// contiguous reads, tmp and Minv at odd strides keep the kernels within the targets at bs 16 and 32.
AX_TEST(cayley_shared_memory_path_within_the_memory_targets) {
  if (!ax_emu::checked_build()) return;
  ax_emu::start_metrics();
  check_cayley<float>(16, 3, 1.0, 16);
  check_cayley<float>(32, 2, -0.7, 32);
  const std::vector<ax_emu::MetricRow> rows = ax_emu::stop_metrics();
  for (const char* kernel : {"cayley_forward_cta_kernel", "cayley_backward_cta_kernel"})
    check_memory_targets(rows, kernel);
}

AX_TEST(cayley_shared_memory_path_bit_exact) {  // bs > 8: one CTA per block
  for (int bs : {9, 12, 16, 23, 32, 64}) {
    check_cayley<float>(bs, 3, 1.0, uint64_t(bs));
    check_cayley<double>(bs, 2, -0.7, uint64_t(bs));
  }
}

AX_TEST(cayley_per_block_coefficients_bit_exact) {  // one coefficient per set of blocks (steering groups)
  for (int bs : {2, 4, 8}) check_cayley<float>(bs, 70, 1.0, uint64_t(bs), 7);
  check_cayley<double>(3, 12, 1.0, 5, 1);
  check_cayley<float>(16, 6, 1.0, 6, 2);
  check_cayley<double>(12, 4, 1.0, 7, 3);
}

AX_TEST(cayley_coeff_zero_is_identity) {
  for (int bs : {4, 16}) {
    std::mt19937_64 rng(1);
    const int64_t nb = 3, m = int64_t(bs) * (bs - 1) / 2;
    Dev<float> t_d(randn<float>(static_cast<size_t>(nb * m), rng), "t"), R_d(static_cast<size_t>(nb * bs * bs), "R");
    ax::CayleyCall call;
    call.n_blocks = nb;
    call.bs = bs;
    call.a_lim = 0.5;
    call.coeff = 0.0;
    call.t = t_d.data();
    call.R = R_d.data();
    K::cayley_forward(call, test_stream());
    const std::vector<float> R = R_d.to_host();
    for (int64_t e = 0; e < nb * bs * bs; ++e) AX_CHECK_EQ(R[e], ((e % (bs * bs)) / bs == e % bs) ? 1.0f : 0.0f);
  }
}
AX_TEST(bad_block_size_throws) {
  std::vector<float> x(4096, 1.f), out(4096);
  ax::CayleyCall call;
  call.n_blocks = 1;
  call.bs = 65;
  call.t = x.data();
  call.R = out.data();
  AX_CHECK_THROWS(std::invalid_argument, K::cayley_forward(call, nullptr), "block size");
}

int main(int argc, char** argv) { return ax_test::run_main(argc, argv); }
