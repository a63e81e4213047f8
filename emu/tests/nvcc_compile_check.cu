// Compile-only check (no GPU needed): the emulator test kernels and the
// portable wrappers must also build with nvcc for real GPUs, e.g.
//   nvcc -std=c++17 -arch=sm_80 -I<repo> -c emu/tests/nvcc_compile_check.cu
#include "emu/tests/emu_check_kernels.cuh"
#include "emu/tests/emu_test_kernels.cuh"

using namespace emu_test;

// Host launchers exercising AX_LAUNCH / AX_CHECK_LAUNCH with every kernel.
void launch_all(ax::stream_t stream, float* f, int* i, unsigned* u, double* d, uint32_t* w, uint16_t* h,
                __half* hh, __nv_bfloat16* bb) {
  AX_LAUNCH((block_sum_kernel<true>), 4, 256, 0, stream, f, f, 1024);
  AX_LAUNCH((block_sum_kernel<false>), 4, 256, 0, stream, f, f, 1024);
  AX_LAUNCH(unwritten_smem_kernel, 2, 64, 0, stream, f, i, 16);
  AX_LAUNCH(dynamic_smem_kernel, 2, 64, 2 * 64 * sizeof(float), stream, f, f);
  AX_LAUNCH(dynamic_smem_poison_kernel, 2, 32, 32 * sizeof(float), stream, f);
  AX_LAUNCH(dynamic_smem_overflow_kernel, 1, 32, 32 * sizeof(float), stream, f, 32);
  AX_LAUNCH(static_smem_overflow_kernel, 1, 64, 0, stream, f, 0);
  AX_LAUNCH(divergent_barrier_exit_kernel, 1, 64, 0, stream, f);
  AX_LAUNCH(divergent_barrier_sites_kernel, 1, 64, 0, stream, f);
  AX_LAUNCH(divergent_shfl_exit_kernel, 1, 64, 0, stream, f);
  AX_LAUNCH(divergent_collectives_kernel, 1, 32, 0, stream, u);
  AX_LAUNCH(shfl_vs_barrier_deadlock_kernel, 1, 64, 0, stream, f);
  AX_LAUNCH(warp_ops_kernel, 1, 64, 0, stream, f, i, d);
  AX_LAUNCH(partial_warp_kernel, 1, 48, 0, stream, f);
  AX_LAUNCH(indexing_kernel, dim3(3, 2, 2), dim3(8, 4, 2), 0, stream, i, u);
  AX_LAUNCH(barrier_heavy_kernel, 100, 256, 0, stream, f);
  AX_LAUNCH(barrier_reduce_atomic_kernel, 2, 96, 0, stream, i, f, u);
  AX_LAUNCH(cp_async_kernel, 1, 16, 0, stream, f, f, f, f);
  AX_LAUNCH(cp_async_zfill_kernel, 1, 8, 0, stream, f, f);
  AX_LAUNCH((mma_kernel<true>), 1, 32, 0, stream, w, w, f, f);
  AX_LAUNCH((mma_kernel<false>), 1, 32, 0, stream, w, w, f, f);
  AX_LAUNCH(ldmatrix_kernel, 1, 32, 0, stream, h, h, w, w);
  AX_LAUNCH(ldmatrix_mma_kernel, 1, 32, 0, stream, bb, bb, f);
  AX_LAUNCH(half_warp_mma_kernel, 1, 32, 0, stream, f);
  AX_LAUNCH(half_convert_kernel, 1, 4, 0, stream, f, hh, bb, f);
  AX_LAUNCH(no_arg_kernel, 1, 1, 0, stream);
  AX_LAUNCH((axpy_kernel<float, 4>), 4, 64, 0, stream, f, f, 2.0f, 1000);
  AX_CHECK_LAUNCH();
}

// The kernels of the memory-check tests.
void launch_checks(ax::stream_t stream, float* f) {
  using namespace emu_check;
  AX_LAUNCH((shared_write_write_kernel<false>), 1, 64, 0, stream, f);
  AX_LAUNCH((shared_read_write_kernel<true>), 1, 64, 0, stream, f);
  AX_LAUNCH((warp_sync_kernel<1>), 1, 64, 0, stream, f);
  AX_LAUNCH((cp_async_pipeline_kernel<0>), 1, 128, 0, stream, f, f, 4);
  AX_LAUNCH((cta_kernel<false, true>), 8, 32, 0, stream, f);
  AX_LAUNCH(copy_kernel, 2, 32, 0, stream, f, f, 40);
  AX_LAUNCH(off_by_one_kernel, 2, 32, 0, stream, f, 40);
  AX_LAUNCH(shared_oob_kernel, 1, 32, 0, stream, f, 0);
  AX_LAUNCH(bounded_kernel, 1, kBoundedThreads, 0, stream, f);
  ax::set_max_dynamic_smem(big_smem_kernel, 64 * 1024);
  AX_LAUNCH(big_smem_kernel, 1, 128, 64 * 1024, stream, f, 16 * 1024);
  AX_LAUNCH(metrics_kernel, 1, 32, 0, stream, f, f, 1);
  AX_CHECK_LAUNCH();
}

// Shared host/device math compiles for both sides.
AX_HD inline float ax_hd_square(float x) { return x * x; }
__global__ void hd_kernel(float* out) { out[threadIdx.x] = ax_hd_square(static_cast<float>(threadIdx.x)); }
void launch_hd(float* out) {
  AX_LAUNCH(hd_kernel, 1, 32, 0, nullptr, out);
  (void)ax_hd_square(2.0f);
}
