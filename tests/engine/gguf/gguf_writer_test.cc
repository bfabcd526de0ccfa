#include "engine/gguf/gguf_writer.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "engine/gguf/dequantize.h"
#include "engine/gguf/gguf_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/gguf/gguf_test_util.h"

namespace kvserve::gguf {
namespace {

using ::kvserve::gguf::testing::Peek;
using ::kvserve::gguf::testing::ReadBytes;
using ::kvserve::gguf::testing::TempPath;
using ::testing::AllOf;
using ::testing::HasSubstr;

// Deep equality of metadata values, types included.
bool Same(const MetadataValue& a, const MetadataValue& b) {
  if (a.type != b.type || a.value.index() != b.value.index()) return false;
  if (const auto* x = std::get_if<MetadataArray>(&a.value)) {
    const auto& y = std::get<MetadataArray>(b.value);
    if (x->size() != y.size()) return false;
    for (size_t i = 0; i < x->size(); ++i) {
      if (!Same((*x)[i], y[i])) return false;
    }
    return true;
  }
  return std::visit(
      [&](const auto& x) {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, MetadataArray>) {
          return false;  // handled above
        } else {
          return x == std::get<X>(b.value);
        }
      },
      a.value);
}

MetadataValue U(ValueType t, uint64_t v) { return {t, v}; }
MetadataValue I(ValueType t, int64_t v) { return {t, v}; }
MetadataValue Arr(MetadataArray a) { return {ValueType::kArray, std::move(a)}; }

class GgufWriterTest : public ::testing::Test {
 protected:
  void TearDown() override { std::remove(path_.c_str()); }
  std::string path_ = TempPath("w.gguf");
};

TEST_F(GgufWriterTest, RoundTripsEveryMetadataType) {
  const std::vector<std::pair<std::string, MetadataValue>> values = {
      {"u8", U(ValueType::kUint8, 255)},
      {"i8", I(ValueType::kInt8, -128)},
      {"u16", U(ValueType::kUint16, 65535)},
      {"i16", I(ValueType::kInt16, -32768)},
      {"u32", U(ValueType::kUint32, std::numeric_limits<uint32_t>::max())},
      {"i32", I(ValueType::kInt32, std::numeric_limits<int32_t>::min())},
      {"u64", U(ValueType::kUint64, std::numeric_limits<uint64_t>::max())},
      {"i64", I(ValueType::kInt64, std::numeric_limits<int64_t>::min())},
      {"f32", {ValueType::kFloat32, 1.5}},
      {"f64", {ValueType::kFloat64, 3.141592653589793}},
      {"bool.t", {ValueType::kBool, true}},
      {"bool.f", {ValueType::kBool, false}},
      {"str", {ValueType::kString, std::string("h\xc3\xa9llo\0x", 8)}},  // UTF-8, NUL
      {"str.empty", {ValueType::kString, std::string()}},
      {"arr.u8", Arr({U(ValueType::kUint8, 1), U(ValueType::kUint8, 2)})},
      {"arr.i64", Arr({I(ValueType::kInt64, -5)})},
      {"arr.f64", Arr({{ValueType::kFloat64, 0.25}, {ValueType::kFloat64, -1e300}})},
      {"arr.bool", Arr({{ValueType::kBool, true}, {ValueType::kBool, false}})},
      {"arr.str",
       Arr({{ValueType::kString, std::string("x")}, {ValueType::kString, std::string()}})},
      {"arr.empty", Arr({})},
      {"arr.nested", Arr({Arr({Arr({I(ValueType::kInt32, 1), I(ValueType::kInt32, 2)}), Arr({})}),
                          Arr({Arr({I(ValueType::kInt32, 3)})})})},
      {"arr.of.str.arrays", Arr({Arr({{ValueType::kString, std::string("a")}}),
                                 Arr({{ValueType::kString, std::string("b")},
                                      {ValueType::kString, std::string("c")}})})},
  };
  GgufWriter w;
  for (const auto& [k, v] : values) w.Set(k, v);
  w.SetString("s", "text");
  w.SetUint32("su32", 7);
  w.SetInt32("si32", -7);
  w.SetUint64("su64", 1ull << 40);
  w.SetFloat32("sf32", 0.1f);
  w.SetBool("sbool", true);
  w.SetStringArray("sarr", {"p", "q"});
  w.SetInt32Array("iarr", {-1, 0, 1});
  w.SetFloat32Array("farr", {0.5f, -0.25f});
  ASSERT_TRUE(w.Write(path_).ok());

  auto f = GgufFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  ASSERT_EQ(g.metadata().size(), values.size() + 9);
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(g.metadata()[i].first, values[i].first);
    EXPECT_TRUE(Same(g.metadata()[i].second, values[i].second)) << values[i].first;
  }
  EXPECT_EQ(*g.GetString("s"), "text");
  EXPECT_EQ(g.Find("su32")->type, ValueType::kUint32);
  EXPECT_EQ(*g.GetUint("su32"), 7u);
  EXPECT_EQ(g.Find("si32")->type, ValueType::kInt32);
  EXPECT_EQ(*g.GetInt("si32"), -7);
  EXPECT_EQ(*g.GetUint("su64"), 1ull << 40);
  EXPECT_EQ(*g.GetFloat("sf32"), static_cast<double>(0.1f));
  EXPECT_TRUE(*g.GetBool("sbool"));
  EXPECT_EQ(*g.GetStringArray("sarr"), (std::vector<std::string>{"p", "q"}));
  EXPECT_EQ(*g.GetIntArray("iarr"), (std::vector<int64_t>{-1, 0, 1}));
  EXPECT_EQ(*g.GetFloatArray("farr"), (std::vector<double>{0.5, -0.25}));
  EXPECT_TRUE(g.GetStringArray("arr.empty")->empty());
  EXPECT_TRUE(g.tensors().empty());
}

TEST_F(GgufWriterTest, SetAgainReplacesInPlace) {
  GgufWriter w;
  w.SetUint32("a", 1);
  w.SetString("b", "x");
  w.SetString("a", "now a string");
  ASSERT_TRUE(w.Write(path_).ok());
  auto f = GgufFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->metadata().size(), 2u);
  EXPECT_EQ((*f)->metadata()[0].first, "a");
  EXPECT_EQ(*(*f)->GetString("a"), "now a string");
}

TEST_F(GgufWriterTest, RoundTripsTensorsAtEveryAlignment) {
  std::vector<float> x(64 * 3);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i));
  std::vector<uint8_t> raw(5 * 2);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<uint8_t>(i * 17);

  for (uint32_t alignment : {1u, 8u, 32u, 64u, 4096u}) {
    SCOPED_TRACE(alignment);
    GgufWriter w;
    w.SetString("general.architecture", "test");
    w.AddRawTensor("raw.f16", {5}, GgmlType::kF16, raw);  // odd size: padding follows
    for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
                       GgmlType::kQ4_0, GgmlType::kQ4_1}) {
      ASSERT_TRUE(w.AddTensor(std::string("t.") + std::string(TypeName(t)), {64, 3}, t, x).ok());
    }
    ASSERT_TRUE(w.Write(path_, alignment).ok());

    auto f = GgufFile::Open(path_);
    ASSERT_TRUE(f.ok()) << f.status();
    const GgufFile& g = **f;
    EXPECT_EQ(g.alignment(), alignment);
    EXPECT_EQ(g.Has("general.alignment"), alignment != 32);
    ASSERT_EQ(g.tensors().size(), 7u);
    const TensorInfo& r = g.tensors()[0];
    EXPECT_EQ(r.n_bytes, 10u);
    EXPECT_EQ(std::memcmp(r.data, raw.data(), raw.size()), 0);
    for (size_t i = 1; i < g.tensors().size(); ++i) {
      const TensorInfo& t = g.tensors()[i];
      EXPECT_EQ(t.offset % alignment, 0u) << t.name;
      // The mapping is page-aligned, so data pointers are aligned too.
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % alignment, 0u) << t.name;
      EXPECT_EQ(t.shape, (std::vector<int64_t>{64, 3}));
      EXPECT_EQ(t.n_bytes, 3 * RowBytes(t.type, 64));
      // Stored bytes are exactly what QuantizeRow makes of each row.
      std::vector<uint8_t> expect(t.n_bytes);
      for (int row = 0; row < 3; ++row) {
        ASSERT_TRUE(
            QuantizeRow(t.type, x.data() + 64 * row, expect.data() + row * RowBytes(t.type, 64), 64)
                .ok());
      }
      EXPECT_EQ(std::memcmp(t.data, expect.data(), t.n_bytes), 0) << t.name;
    }
    // Each tensor's data is padded to the alignment, the last one included:
    // the data section then ends at the file's end.
    const TensorInfo& last = g.tensors().back();
    const std::vector<uint8_t> bytes = ReadBytes(path_);
    const uint64_t data_size = (last.offset + last.n_bytes + alignment - 1) / alignment * alignment;
    ASSERT_GE(bytes.size(), data_size);
    const uint64_t data_start = bytes.size() - data_size;
    EXPECT_EQ(data_start % alignment, 0u);
    EXPECT_EQ(std::memcmp(bytes.data() + data_start + last.offset, last.data, last.n_bytes), 0);
  }
}

TEST_F(GgufWriterTest, RejectsBadInput) {
  {
    GgufWriter w;
    EXPECT_THAT(w.Write(path_, 24).message(), HasSubstr("not a power of two"));
    EXPECT_THAT(w.Write(path_, 0).message(), HasSubstr("not a power of two"));
  }
  {
    GgufWriter w;
    w.AddRawTensor("t", {32}, GgmlType::kQ8_0, std::vector<uint8_t>(33));
    EXPECT_THAT(w.Write(path_).message(), HasSubstr("33 bytes of data, expected 34"));
  }
  {
    GgufWriter w;
    w.AddRawTensor("t", {4}, GgmlType::kF32, std::vector<uint8_t>(16));
    w.AddRawTensor("t", {4}, GgmlType::kF32, std::vector<uint8_t>(16));
    EXPECT_THAT(w.Write(path_).message(), HasSubstr("duplicate name"));
  }
  {
    GgufWriter w;
    w.AddRawTensor("t", {33}, GgmlType::kQ4_0, std::vector<uint8_t>(18));
    EXPECT_THAT(w.Write(path_).message(), HasSubstr("row length 33"));
  }
  {
    GgufWriter w;
    w.Set("mixed", Arr({U(ValueType::kUint8, 1), I(ValueType::kInt8, 1)}));
    EXPECT_THAT(w.Write(path_).message(), AllOf(HasSubstr("'mixed'"), HasSubstr("element 1")));
  }
  {
    GgufWriter w;
    w.Set("wrong", {ValueType::kString, uint64_t{3}});
    EXPECT_THAT(w.Write(path_).message(), HasSubstr("'wrong'"));
    w.Set("wrong", U(ValueType::kUint8, 256));
    EXPECT_THAT(w.Write(path_).message(), HasSubstr("'wrong'"));
  }
  {
    GgufWriter w;
    w.SetUint32("general.alignment", 64);
    EXPECT_THAT(w.Write(path_, 32).message(), HasSubstr("general.alignment"));
    EXPECT_TRUE(w.Write(path_, 64).ok());
  }
  {
    GgufWriter w;
    EXPECT_THAT(w.AddTensor("t", {32, 2}, GgmlType::kQ8_0, std::vector<float>(63)).message(),
                HasSubstr("63 values for 64 elements"));
    EXPECT_FALSE(w.AddTensor("t", {30}, GgmlType::kQ8_0, std::vector<float>(30)).ok());
    EXPECT_FALSE(w.AddTensor("t", {256}, GgmlType::kQ4_K, std::vector<float>(256)).ok());
    EXPECT_FALSE(w.AddTensor("t", {}, GgmlType::kF32, {}).ok());
    EXPECT_FALSE(w.AddTensor("t", {0, 4}, GgmlType::kF32, {}).ok());
  }
  EXPECT_EQ(GgufWriter().Write("/nonexistent-dir/x.gguf").code(), absl::StatusCode::kUnavailable);
}

TEST_F(GgufWriterTest, HeaderLayout) {
  GgufWriter w;
  w.SetUint32("k", 5);
  w.AddRawTensor("t", {8}, GgmlType::kF32, std::vector<uint8_t>(32, 0));
  ASSERT_TRUE(w.Write(path_).ok());
  const std::vector<uint8_t> b = ReadBytes(path_);
  EXPECT_EQ(std::string(b.begin(), b.begin() + 4), "GGUF");
  EXPECT_EQ(Peek<uint32_t>(b, 4), 3u);   // version
  EXPECT_EQ(Peek<uint64_t>(b, 8), 1u);   // tensors
  EXPECT_EQ(Peek<uint64_t>(b, 16), 1u);  // metadata entries
  EXPECT_EQ(Peek<uint64_t>(b, 24), 1u);  // key length
  EXPECT_EQ(b[32], 'k');
  EXPECT_EQ(Peek<uint32_t>(b, 33), static_cast<uint32_t>(ValueType::kUint32));
  EXPECT_EQ(Peek<uint32_t>(b, 37), 5u);
  // Tensor info at 41: name, n_dims, dim, type, offset; data at 96.
  EXPECT_EQ(Peek<uint64_t>(b, 41), 1u);
  EXPECT_EQ(Peek<uint32_t>(b, 50), 1u);
  EXPECT_EQ(Peek<uint64_t>(b, 54), 8u);
  EXPECT_EQ(Peek<uint32_t>(b, 62), 0u);
  EXPECT_EQ(Peek<uint64_t>(b, 66), 0u);
  EXPECT_EQ(b.size(), 96u + 32u);
}

}  // namespace
}  // namespace kvserve::gguf
