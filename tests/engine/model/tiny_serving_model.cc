#include "tests/engine/model/tiny_serving_model.h"

#include <unistd.h>

#include <cstdio>

#include "gtest/gtest.h"
#include "tests/engine/model/tiny_model.h"
#include "tests/support/temp_dir.h"

namespace kvserve::testing {

absl::StatusOr<TinyServingModel> LoadTinyServingModel(const std::string& name, int n_ctx) {
  TinyLlamaSpec spec;
  spec.n_layers = 4;
  spec.n_embd = 256;
  spec.n_head = 4;
  spec.n_kv_head = 2;
  spec.n_ff = 512;
  spec.n_vocab = 64;
  spec.n_ctx = n_ctx;
  spec.matrix_type = gguf::GgmlType::kQ8_0;
  TinyLlamaWeights w;
  const std::string path = kvserve::testing::ProcessTempDir() + "/" + name + ".gguf";
  if (auto s = WriteTinyLlama(path, spec, &w); !s.ok()) return s;
  TinyServingModel out;
  auto m = model::LlamaModel::Load(path, 2);
  std::remove(path.c_str());
  if (!m.ok()) return m.status();
  out.model = std::move(*m);
  auto t = tokenizer::Tokenizer::FromGguf(out.model->file());
  if (!t.ok()) return t.status();
  out.tokenizer = std::move(*t);
  return out;
}

}  // namespace kvserve::testing
