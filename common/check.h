// CHECK macros for broken invariants. A failed CHECK is a bug, never a user
// error: it prints the condition and location and aborts. Recoverable
// failures return absl::Status instead.
//
// Thread-safety: the macros are safe to use from any thread.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace kvserve::internal {
[[noreturn]] inline void CheckFailed(const char* cond, const char* file, int line,
                                     const char* msg) {
  std::fprintf(stderr, "CHECK failed: %s at %s:%d%s%s\n", cond, file, line, msg[0] ? ": " : "",
               msg);
  std::fflush(stderr);
  std::abort();
}
}  // namespace kvserve::internal

#define KV_CHECK(cond)                                                            \
  do {                                                                            \
    if (!(cond)) ::kvserve::internal::CheckFailed(#cond, __FILE__, __LINE__, ""); \
  } while (0)

#define KV_CHECK_MSG(cond, msg)                                                      \
  do {                                                                               \
    if (!(cond)) ::kvserve::internal::CheckFailed(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)

#define KV_CHECK_EQ(a, b) KV_CHECK((a) == (b))
#define KV_CHECK_LT(a, b) KV_CHECK((a) < (b))
#define KV_CHECK_LE(a, b) KV_CHECK((a) <= (b))
#define KV_CHECK_GE(a, b) KV_CHECK((a) >= (b))
