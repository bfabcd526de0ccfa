// Abseil here is built with its own absl::string_view (not an alias of
// std::string_view), so StrCat and heterogeneous hash-map lookups do not
// accept std::string_view directly; AbslSv() converts without copying.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace kvserve::tokenizer {

inline absl::string_view AbslSv(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace kvserve::tokenizer
