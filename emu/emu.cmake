# Build helpers of the CUDA emulator (include() from a CMakeLists.txt that set AX_EMU_ROOT, the folder that holds
# emu/, and AX_CUDA_INCLUDE, the CUDA headers; cuda_fp16.h / cuda_bf16.h compile in host mode).
#
#   ax_add_emu_executable(name sources...)      emulated kernels under ASan + UBSan (AX_SANITIZE, default ON)
#   ax_add_kernel_test(name source)             the same, one ctest test running main()
#   ax_add_test_cases(exe cases...)             one ctest test per emu/testing.h case
#   ax_add_checked_executable(name sources...)  the checked build (emu/checker.h): every access of kernel code seen
#   ax_add_plain_executable(name sources...)    no sanitizer (as a Python extension is built)
#   ax_add_nvcc_compile_test(name source.cu)    compile-only nvcc check for sm_80 / sm_90 (skipped without nvcc)
find_package(Threads REQUIRED)

option(AX_SANITIZE "Build the emulated tests with -fsanitize=address,undefined" ON)
set(AX_SAN_FLAGS "")
if(AX_SANITIZE)
  set(AX_SAN_FLAGS -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
endif()
set(AX_TEST_ENV
    "ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1"
    "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")

function(ax_emu_target name)
  target_include_directories(${name} PRIVATE "${AX_EMU_ROOT}" "${AX_CUDA_INCLUDE}")
  target_compile_definitions(${name} PRIVATE AX_EMULATE_CUDA)
  target_link_libraries(${name} PRIVATE Threads::Threads ${CMAKE_DL_LIBS})
endfunction()

function(ax_add_emu_executable name)
  add_executable(${name} ${ARGN})
  ax_emu_target(${name})
  target_compile_options(${name} PRIVATE ${AX_SAN_FLAGS} -g -Wall -Wextra -Wno-unknown-pragmas)
  target_link_options(${name} PRIVATE ${AX_SAN_FLAGS})
endfunction()

function(ax_add_kernel_test name source)
  ax_add_emu_executable(${name} ${source} ${ARGN})
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES ENVIRONMENT "${AX_TEST_ENV}" TIMEOUT 600)
endfunction()

function(ax_add_test_cases exe)
  foreach(case ${ARGN})
    add_test(NAME ${exe}.${case} COMMAND ${exe} ${case})
    set_tests_properties(${exe}.${case} PROPERTIES ENVIRONMENT "${AX_TEST_ENV}" TIMEOUT 600)
  endforeach()
endfunction()

# Checked build: kernel code compiled with -fsanitize=thread instrumentation and linked without the
# ThreadSanitizer runtime (the emulator defines the __tsan_* hooks and checks every access). GCC or Clang; no
# ASan (the two instrumentations exclude each other). -O2 keeps runs fast. Accesses stay as wide as the kernel
# source writes them (the memory metrics count them): no host vectorisation, no store merging, no scalar
# replacement of aggregates (a uint4 / float4 load stays one 16-byte access).
# AX_CHECKED_OPT: -O2 -g by default (the memory metrics name each access with its inline chain); the mutation suite
# builds its mutants with -O1 -g1 (half the compile time; sites named without inline chains).
set(AX_CHECKED_OPT "-O2;-g" CACHE STRING "optimisation and debug-info flags of the checked build")
set(AX_CHECKED_FLAGS ${AX_CHECKED_OPT} -fno-omit-frame-pointer -fsanitize=thread -fno-tree-vectorize
    -fno-tree-slp-vectorize -fno-tree-sra -fno-store-merging)
function(ax_add_checked_executable name)
  add_executable(${name} ${ARGN})
  ax_emu_target(${name})
  target_compile_options(${name} PRIVATE ${AX_CHECKED_FLAGS} -Wall -Wextra -Wno-unknown-pragmas)
endfunction()

function(ax_add_plain_executable name)
  add_executable(${name} ${ARGN})
  ax_emu_target(${name})
  target_compile_options(${name} PRIVATE -O1 -g -Wall -Wextra -Wno-unknown-pragmas)
endfunction()

find_program(AX_NVCC nvcc HINTS "${AX_CUDA_HOME}/bin")
function(ax_add_nvcc_compile_test name source)
  if(NOT AX_NVCC)
    return()
  endif()
  foreach(arch 80 90)
    add_test(NAME ${name}.sm_${arch}
             COMMAND "${AX_NVCC}" -std=c++17 -arch=sm_${arch} -I "${AX_EMU_ROOT}" -c "${source}"
                     -o "${CMAKE_CURRENT_BINARY_DIR}/${name}.sm_${arch}.o")
    set_tests_properties(${name}.sm_${arch} PROPERTIES TIMEOUT 600)
  endforeach()
endfunction()
