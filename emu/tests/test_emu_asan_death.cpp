// Death tests: out-of-bounds shared-memory accesses must be caught by
// AddressSanitizer (the guard zones around each shared region are poisoned).
// Registered in CMake with PASS_REGULAR_EXPRESSION "use-after-poison".
#include <cstdio>
#include <cstring>
#include <vector>

#include "emu/tests/emu_test_kernels.cuh"

using namespace emu_test;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s dynamic|static\n", argv[0]);
    return 2;
  }
  std::vector<float> out(4, 0.f);
  if (std::strcmp(argv[1], "dynamic") == 0) {
    // 32 floats of dynamic shared memory; the kernel reads buf[32].
    AX_LAUNCH(dynamic_smem_overflow_kernel, 1, 32, 32 * sizeof(float), nullptr, out.data(), 32);
  } else if (std::strcmp(argv[1], "static") == 0) {
    // tile is float[8][8]; the kernel reads element 64.
    AX_LAUNCH(static_smem_overflow_kernel, 1, 64, 0, nullptr, out.data(), 64);
  } else {
    return 2;
  }
  std::printf("no sanitizer error (value %f)\n", out[0]);
  return 0;
}
