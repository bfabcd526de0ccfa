// A temporary directory of this test process's own.
//
// ctest runs each GoogleTest case as its own process, and in parallel with
// -j: cases that write a fixed file name under ::testing::TempDir() would
// overwrite each other's files (a model another case has memory-mapped, a
// config it is reading). Files under ProcessTempDir() cannot collide.
//
// Thread-safety: safe from any thread (a function-local static).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace kvserve::testing {

// ::testing::TempDir()/kvserve-<pid>, created on first use; no trailing '/'.
inline const std::string& ProcessTempDir() {
  static const std::string dir = [] {
    std::string d = ::testing::TempDir() + "/kvserve-" + std::to_string(getpid());
    mkdir(d.c_str(), 0700);  // EEXIST is fine: the same process
    return d;
  }();
  return dir;
}

}  // namespace kvserve::testing
