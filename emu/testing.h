// Minimal torch-free test harness for the C++ (ctest) tests.
//
//   AX_TEST(name) { AX_CHECK(cond); AX_CHECK_EQ(a, b); AX_CHECK_NEAR(a, b, tol); }
//   int main(int argc, char** argv) { return ax_test::run_main(argc, argv); }
//
// `prog` runs every test, `prog name...` runs the named tests, `prog --list`
// lists them, `--fail-fast` stops after the first failing test. Exit status is non-zero if any check failed.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace ax_test {

struct Case {
  const char* name;
  void (*fn)();
};
inline std::vector<Case>& registry() {
  static std::vector<Case> r;
  return r;
}
inline int& failures() {
  static int f = 0;
  return f;
}
struct Registrar {
  Registrar(const char* name, void (*fn)()) { registry().push_back(Case{name, fn}); }
};

template <class T>
std::string show(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

inline void report(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "%s:%d: CHECK FAILED: %s\n", file, line, what.c_str());
  ++failures();
}

inline int run_main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--list") == 0) {
    for (const Case& c : registry()) std::printf("%s\n", c.name);
    return 0;
  }
  bool fail_fast = false;
  int names = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--fail-fast") == 0)
      fail_fast = true;
    else
      ++names;
  }
  int ran = 0;
  for (const Case& c : registry()) {
    if (fail_fast && failures()) break;
    bool selected = names == 0;
    for (int i = 1; i < argc; ++i)
      if (std::strcmp(argv[i], c.name) == 0) selected = true;
    if (!selected) continue;
    ++ran;
    int before = failures();
    std::printf("[ RUN  ] %s\n", c.name);
    std::fflush(stdout);
    try {
      c.fn();
    } catch (const std::exception& e) {
      report(__FILE__, __LINE__, std::string("unexpected exception: ") + e.what());
    }
    std::printf("[ %s ] %s\n", failures() == before ? " OK " : "FAIL", c.name);
    std::fflush(stdout);
  }
  if (ran == 0) {
    std::fprintf(stderr, "no test matched\n");
    return 2;
  }
  return failures() ? 1 : 0;
}

}  // namespace ax_test

#define AX_TEST(name)                                                 \
  static void ax_test_fn_##name();                                    \
  static ::ax_test::Registrar ax_test_reg_##name(#name, &ax_test_fn_##name); \
  static void ax_test_fn_##name()

#define AX_CHECK(cond)                                                      \
  do {                                                                      \
    if (!(cond)) ::ax_test::report(__FILE__, __LINE__, "AX_CHECK(" #cond ")"); \
  } while (0)

#define AX_CHECK_EQ(a, b)                                                                                  \
  do {                                                                                                     \
    auto ax_a_ = (a);                                                                                      \
    auto ax_b_ = (b);                                                                                      \
    if (!(ax_a_ == ax_b_))                                                                                 \
      ::ax_test::report(__FILE__, __LINE__,                                                                \
                        std::string(#a " == " #b " (") + ::ax_test::show(ax_a_) + " vs " + ::ax_test::show(ax_b_) + ")"); \
  } while (0)

#define AX_CHECK_NEAR(a, b, tol)                                                                           \
  do {                                                                                                     \
    double ax_a_ = static_cast<double>(a), ax_b_ = static_cast<double>(b);                                 \
    if (!(std::fabs(ax_a_ - ax_b_) <= (tol)))                                                              \
      ::ax_test::report(__FILE__, __LINE__,                                                                \
                        std::string(#a " ~= " #b " (") + ::ax_test::show(ax_a_) + " vs " + ::ax_test::show(ax_b_) + ")"); \
  } while (0)

// Expects `stmt` to throw ExcType whose what() contains every listed substring.
#define AX_CHECK_THROWS(ExcType, stmt, ...)                                                      \
  do {                                                                                           \
    bool ax_thrown_ = false;                                                                     \
    try {                                                                                        \
      stmt;                                                                                      \
    } catch (const ExcType& ax_e_) {                                                             \
      ax_thrown_ = true;                                                                         \
      std::string ax_msg_ = ax_e_.what();                                                        \
      std::printf("    (expected error) %s\n", ax_msg_.c_str());                                 \
      for (const char* ax_sub_ : {__VA_ARGS__})                                                  \
        if (ax_msg_.find(ax_sub_) == std::string::npos)                                          \
          ::ax_test::report(__FILE__, __LINE__, std::string("message lacks '") + ax_sub_ + "'"); \
    }                                                                                            \
    if (!ax_thrown_) ::ax_test::report(__FILE__, __LINE__, "expected " #ExcType " from " #stmt); \
  } while (0)
