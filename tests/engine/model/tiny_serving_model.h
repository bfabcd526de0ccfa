// A tiny random Llama model with its tokenizer, loaded and ready for an
// engine: what the engine, HTTP and gRPC tests serve when the real model is
// not the point. Big enough (4 layers, 256 wide) that a few thousand tokens
// take far longer than the short deadlines and cancels those tests use.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/llama_model.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvserve::testing {

struct TinyServingModel {
  std::unique_ptr<model::LlamaModel> model;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
};

// Writes the model to a file unique to this process and `name` (ctest runs
// test cases of one suite in parallel processes), loads it and removes the
// file (the model keeps its own mapping).
absl::StatusOr<TinyServingModel> LoadTinyServingModel(const std::string& name, int n_ctx);

}  // namespace kvserve::testing
