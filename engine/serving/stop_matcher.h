// Finds stop strings in streamed text, also when a stop string is split
// across tokens: text that could still be the start of a stop string is
// held back until it either completes one or cannot.
//
// Thread-safety: one per sequence; not thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvserve::engine {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends new text. Returns the text that is now safe to emit; sets
  // *stopped when a stop string completed (the returned text is everything
  // before it, and later calls return nothing).
  std::string Push(std::string_view text, bool* stopped);
  // Text still held back (a partial stop string at the end): emitted when
  // generation ends for another reason.
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace kvserve::engine
