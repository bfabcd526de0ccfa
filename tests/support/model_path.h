// Where tests find the real model file (SmolLM2-135M-Instruct, Q4_1 GGUF).
//
// Thread-safety: the functions read the environment and the file system and
// may be called from any thread.
#pragma once

#include <string>

namespace kvserve::testing {

// The model file name looked for in the default locations.
inline constexpr char kModelFileName[] = "SmolLM2-135M-Instruct.Q4_1.gguf";

// The path of the model file: $KVSERVE_MODEL if set (used as is, and "" if
// no such file exists), else the first existing of
// $HOME/.cache/kvserve/models/<kModelFileName> and
// $HOME/.cache/kvserve/<kModelFileName>; "" when none exists.
std::string ModelPath();

// Says why ModelPath() is empty: the paths tried and how to point tests at
// the model with KVSERVE_MODEL. For FAIL() messages of `model` tests.
std::string ModelMissingMessage();

}  // namespace kvserve::testing
