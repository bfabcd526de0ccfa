// Opens the real SmolLM2-135M-Instruct Q4_1 file (label `model`).
#include <cmath>
#include <string>
#include <vector>

#include "engine/gguf/dequantize.h"
#include "engine/gguf/gguf_file.h"
#include "gtest/gtest.h"
#include "tests/support/model_path.h"

namespace kvserve::gguf {
namespace {

class GgufModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = kvserve::testing::ModelPath();
    if (path.empty()) GTEST_FAIL() << kvserve::testing::ModelMissingMessage();
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = std::move(*f);
  }

  std::vector<float> Row(const TensorInfo& t, int64_t row) {
    std::vector<float> y(static_cast<size_t>(t.shape[0]));
    const size_t row_bytes = RowBytes(t.type, t.shape[0]);
    absl::Status s = DequantizeRow(t.type, t.data + row * row_bytes, y.data(), t.shape[0]);
    EXPECT_TRUE(s.ok()) << s;
    return y;
  }

  std::unique_ptr<GgufFile> file_;
};

TEST_F(GgufModelTest, MetadataAndShapes) {
  EXPECT_EQ(file_->version(), 3u);
  EXPECT_EQ(*file_->GetString("general.architecture"), "llama");
  EXPECT_EQ(*file_->GetUint("llama.block_count"), 30u);
  EXPECT_EQ(*file_->GetUint("llama.embedding_length"), 576u);
  EXPECT_EQ(file_->GetStringArray("tokenizer.ggml.tokens")->size(), 49152u);
  EXPECT_EQ(file_->tensors().size(), 272u);

  absl::StatusOr<const TensorInfo*> embd = file_->GetTensor("token_embd.weight", {576, 49152});
  ASSERT_TRUE(embd.ok()) << embd.status();
  EXPECT_EQ((*embd)->type, GgmlType::kQ8_0);
  absl::StatusOr<const TensorInfo*> k = file_->GetTensor("blk.0.attn_k.weight", {576, 192});
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ((*k)->type, GgmlType::kQ4_1);
  absl::StatusOr<const TensorInfo*> norm = file_->GetTensor("output_norm.weight", {576});
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_EQ((*norm)->type, GgmlType::kF32);
}

// Row sums and first values as computed by the `gguf` Python package's
// dequantiser on this file.
struct RowRef {
  const char* tensor;
  int64_t row;
  double sum, sum_abs;
  float first;
};

TEST_F(GgufModelTest, RowsMatchReferenceDequantisation) {
  const RowRef refs[] = {
      {"token_embd.weight", 0, -2.25410938, 54.6923208, -0.106544495f},
      {"token_embd.weight", 1, 0.35922718, 43.4406977, -0.0238037109f},
      {"token_embd.weight", 1000, 1.97842503, 51.0777006, -0.111938477f},
      {"token_embd.weight", 49151, -0.466220856, 70.8194695, 0.011505127f},
      {"blk.0.attn_k.weight", 0, 3.87286377, 176.688049, -0.155273438f},
      {"blk.0.attn_k.weight", 5, 0.716369629, 135.2547, -0.237548828f},
      {"blk.0.attn_k.weight", 191, 6.21496582, 139.089722, 0.0158691406f},
      {"blk.29.ffn_down.weight", 0, -10.8383179, 202.345703, -0.27331543f},
      {"blk.29.ffn_down.weight", 575, -5.22994995, 227.886261, -0.229187012f},
      {"output_norm.weight", 0, 1038.33203, 1045.09766, 1.7578125f},
  };
  for (const RowRef& r : refs) {
    SCOPED_TRACE(std::string(r.tensor) + " row " + std::to_string(r.row));
    const TensorInfo* t = file_->FindTensor(r.tensor);
    ASSERT_NE(t, nullptr);
    const std::vector<float> y = Row(*t, r.row);
    double sum = 0, sum_abs = 0;
    for (float v : y) {
      ASSERT_TRUE(std::isfinite(v));
      sum += v;
      sum_abs += std::fabs(v);
    }
    EXPECT_NEAR(sum, r.sum, 1e-4 * r.sum_abs);
    EXPECT_NEAR(sum_abs, r.sum_abs, 1e-5 * r.sum_abs);
    EXPECT_FLOAT_EQ(y[0], r.first);
  }
}

TEST_F(GgufModelTest, EveryTensorDequantisesToPlausibleValues) {
  std::vector<float> y;
  for (const TensorInfo& t : file_->tensors()) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(IsSupportedType(t.type));
    y.resize(static_cast<size_t>(t.shape[0]));
    const size_t row_bytes = RowBytes(t.type, t.shape[0]);
    ASSERT_EQ(row_bytes * static_cast<size_t>(t.n_rows()), t.n_bytes);
    double sum_abs = 0;
    float max_abs = 0;
    for (int64_t r = 0; r < t.n_rows(); ++r) {
      ASSERT_TRUE(DequantizeRow(t.type, t.data + r * row_bytes, y.data(), t.shape[0]).ok());
      for (float v : y) {
        ASSERT_TRUE(std::isfinite(v)) << "row " << r;
        sum_abs += std::fabs(v);
        max_abs = std::max(max_abs, std::fabs(v));
      }
    }
    // Trained weights and norms of a small model: neither all zero nor huge.
    const double mean_abs = sum_abs / static_cast<double>(t.n_elements());
    EXPECT_GT(mean_abs, 1e-4);
    EXPECT_LT(mean_abs, 10.0);
    EXPECT_LT(max_abs, 1000.0f);
  }
}

}  // namespace
}  // namespace kvserve::gguf
