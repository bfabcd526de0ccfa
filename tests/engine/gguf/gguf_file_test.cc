#include "engine/gguf/gguf_file.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/gguf/dequantize.h"
#include "engine/gguf/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/gguf/gguf_test_util.h"

namespace kvserve::gguf {
namespace {

using ::kvserve::gguf::testing::FindBytes;
using ::kvserve::gguf::testing::Peek;
using ::kvserve::gguf::testing::Poke;
using ::kvserve::gguf::testing::ReadBytes;
using ::kvserve::gguf::testing::TempPath;
using ::kvserve::gguf::testing::WriteBytes;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The tensor names below appear nowhere else in the file, so tests can find
// their infos by searching for the name.
constexpr char kQuantName[] = "tensor.quant";
constexpr char kNormName[] = "tensor.norm";

std::vector<float> Ramp(int n, float scale) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = scale * static_cast<float>((i * 7) % 23 - 11);
  return v;
}

// A small valid file: every metadata value type and two tensors. The last
// tensor's data is 32 bytes, a whole alignment unit, so the file ends
// exactly where the data does and every shorter prefix is invalid.
std::vector<uint8_t> MakeSmallFile(const std::string& path) {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetUint32("general.alignment", 32);
  w.Set("t.u8", {ValueType::kUint8, uint64_t{200}});
  w.Set("t.i8", {ValueType::kInt8, int64_t{-100}});
  w.Set("t.u16", {ValueType::kUint16, uint64_t{60000}});
  w.Set("t.i16", {ValueType::kInt16, int64_t{-30000}});
  w.SetUint32("t.u32", 4000000000u);
  w.SetInt32("t.i32", -2000000000);
  w.SetFloat32("t.f32", 0.5f);
  w.SetBool("t.bool", true);
  w.SetUint64("t.u64", 1ull << 60);
  w.Set("t.i64", {ValueType::kInt64, int64_t{-(1ll << 60)}});
  w.Set("t.f64", {ValueType::kFloat64, 0.1});
  w.SetStringArray("t.strings", {"a", "", "ccc"});
  w.SetInt32Array("t.ints", {1, -2, 3});
  MetadataArray inner1 = {{ValueType::kInt16, int64_t{1}}, {ValueType::kInt16, int64_t{2}}};
  MetadataArray inner2 = {{ValueType::kInt16, int64_t{3}}};
  w.Set("t.nested", {ValueType::kArray,
                     MetadataArray{{ValueType::kArray, inner1}, {ValueType::kArray, inner2}}});
  EXPECT_TRUE(w.AddTensor(kQuantName, {64, 2}, GgmlType::kQ8_0, Ramp(128, 0.1f)).ok());
  EXPECT_TRUE(w.AddTensor(kNormName, {8}, GgmlType::kF32, Ramp(8, 1.0f)).ok());
  const absl::Status s = w.Write(path);
  EXPECT_TRUE(s.ok()) << s;
  return ReadBytes(path);
}

// Offsets of a tensor info's fields, found by the tensor's name.
struct InfoFields {
  size_t name_len;  // u64 name length
  size_t n_dims;    // u32
  size_t dims;      // u64 each
  size_t type;      // u32
  size_t offset;    // u64
};
InfoFields LocateInfo(const std::vector<uint8_t>& bytes, const std::string& name) {
  InfoFields f;
  const size_t at = FindBytes(bytes, name);
  f.name_len = at - 8;
  f.n_dims = at + name.size();
  f.dims = f.n_dims + 4;
  f.type = f.dims + 8 * Peek<uint32_t>(bytes, f.n_dims);
  f.offset = f.type + 4;
  return f;
}

// Writes `bytes` and opens them, expecting failure; returns the message.
std::string OpenError(const std::string& path, const std::vector<uint8_t>& bytes) {
  WriteBytes(path, bytes);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path);
  EXPECT_FALSE(f.ok());
  if (f.ok()) return "";
  EXPECT_THAT(f.status().message(), HasSubstr(path));
  return std::string(f.status().message());
}

class GgufFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = TempPath("small.gguf");
    bytes_ = MakeSmallFile(path_);
    ASSERT_GT(bytes_.size(), 200u);
    bad_ = TempPath("bad.gguf");
  }
  void TearDown() override {
    std::remove(path_.c_str());
    std::remove(bad_.c_str());
  }
  std::string path_, bad_;
  std::vector<uint8_t> bytes_;
};

TEST_F(GgufFileTest, ReadsMetadataOfEveryType) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.path(), path_);
  ASSERT_EQ(g.metadata().size(), 16u);
  EXPECT_EQ(g.metadata()[0].first, "general.architecture");  // file order
  EXPECT_EQ(*g.GetString("general.architecture"), "llama");
  EXPECT_EQ(*g.GetUint("t.u8"), 200u);
  EXPECT_EQ(*g.GetInt("t.i8"), -100);
  EXPECT_EQ(*g.GetUint("t.u16"), 60000u);
  EXPECT_EQ(*g.GetInt("t.i16"), -30000);
  EXPECT_EQ(*g.GetUint("t.u32"), 4000000000u);
  EXPECT_EQ(*g.GetInt("t.u32"), 4000000000);  // any integer type that fits
  EXPECT_EQ(*g.GetInt("t.i32"), -2000000000);
  EXPECT_EQ(*g.GetFloat("t.f32"), 0.5);
  EXPECT_EQ(*g.GetFloat("t.u32"), 4e9);  // integers widen to float
  EXPECT_EQ(*g.GetBool("t.bool"), true);
  EXPECT_EQ(*g.GetUint("t.u64"), 1ull << 60);
  EXPECT_EQ(*g.GetInt("t.i64"), -(1ll << 60));
  EXPECT_EQ(*g.GetFloat("t.f64"), 0.1);
  EXPECT_THAT(*g.GetStringArray("t.strings"), ElementsAre("a", "", "ccc"));
  EXPECT_THAT(*g.GetIntArray("t.ints"), ElementsAre(1, -2, 3));
  EXPECT_THAT(*g.GetFloatArray("t.ints"), ElementsAre(1.0, -2.0, 3.0));
  EXPECT_EQ(g.Find("t.i8")->type, ValueType::kInt8);
  EXPECT_EQ(g.Find("t.f32")->type, ValueType::kFloat32);

  const MetadataValue* nested = g.Find("t.nested");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->type, ValueType::kArray);
  const auto& outer = std::get<MetadataArray>(nested->value);
  ASSERT_EQ(outer.size(), 2u);
  const auto& in1 = std::get<MetadataArray>(outer[0].value);
  ASSERT_EQ(in1.size(), 2u);
  EXPECT_EQ(in1[1].type, ValueType::kInt16);
  EXPECT_EQ(std::get<int64_t>(in1[1].value), 2);
  EXPECT_EQ(std::get<MetadataArray>(outer[1].value).size(), 1u);
  EXPECT_FALSE(g.Has("t.missing"));
}

TEST_F(GgufFileTest, TypedGettersReportKeyAndType) {
  auto f = GgufFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  absl::Status s = g.GetString("t.missing").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("t.missing")));

  s = g.GetString("t.u32").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr("'t.u32'"), HasSubstr("uint32")));
  EXPECT_THAT(g.GetUint("t.i8").status().message(), HasSubstr("negative"));
  EXPECT_THAT(g.GetInt("general.architecture").status().message(), HasSubstr("string"));
  EXPECT_FALSE(g.GetBool("t.u8").ok());
  EXPECT_FALSE(g.GetFloat("t.strings").ok());
  EXPECT_FALSE(g.GetStringArray("t.ints").ok());
  EXPECT_FALSE(g.GetIntArray("t.strings").ok());
  EXPECT_FALSE(g.GetIntArray("t.u8").ok());
}

TEST_F(GgufFileTest, ReadsTensors) {
  auto f = GgufFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  ASSERT_EQ(g.tensors().size(), 2u);
  const TensorInfo& q = g.tensors()[0];
  EXPECT_EQ(q.name, kQuantName);
  EXPECT_THAT(q.shape, ElementsAre(64, 2));
  EXPECT_EQ(q.type, GgmlType::kQ8_0);
  EXPECT_EQ(q.n_elements(), 128);
  EXPECT_EQ(q.n_rows(), 2);
  EXPECT_EQ(q.n_bytes, 2u * 2 * 34);
  EXPECT_EQ(q.offset, 0u);
  const TensorInfo& n = g.tensors()[1];
  EXPECT_EQ(n.offset, 160u);  // 136 bytes padded to 32
  EXPECT_EQ(n.n_bytes, 32u);
  EXPECT_EQ(n.data + n.n_bytes, q.data + 160 + 32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(q.data) % 32, 0u);

  std::vector<float> y(128);
  ASSERT_TRUE(DequantizeRow(q.type, q.data, y.data(), 128).ok());
  const std::vector<float> x = Ramp(128, 0.1f);
  for (int i = 0; i < 128; ++i) EXPECT_NEAR(y[i], x[i], 0.005) << i;
  ASSERT_TRUE(DequantizeRow(n.type, n.data, y.data(), 8).ok());
  for (int i = 0; i < 8; ++i) EXPECT_EQ(y[i], Ramp(8, 1.0f)[i]);

  EXPECT_EQ(g.FindTensor(kNormName), &n);
  EXPECT_EQ(g.FindTensor("nope"), nullptr);
  absl::StatusOr<const TensorInfo*> t = g.GetTensor(kQuantName, {64, 2});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, &q);
}

TEST_F(GgufFileTest, GetTensorShapeMismatchNamesBothShapes) {
  auto f = GgufFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  absl::Status s = (*f)->GetTensor(kQuantName, {2, 64}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path_), HasSubstr(kQuantName), HasSubstr("{64, 2}"),
                                 HasSubstr("{2, 64}")));
  s = (*f)->GetTensor("missing.weight", {1}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("missing.weight"));
}

TEST_F(GgufFileTest, MissingAndEmptyFiles) {
  const std::string missing = TempPath("does_not_exist.gguf");
  auto f = GgufFile::Open(missing);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr(missing));
  EXPECT_THAT(OpenError(bad_, {}), HasSubstr("empty"));
  EXPECT_FALSE(GgufFile::Open(::testing::TempDir()).ok());  // a directory
}

TEST_F(GgufFileTest, BadMagic) {
  std::vector<uint8_t> b = bytes_;
  b[0] = 'X';
  EXPECT_THAT(OpenError(bad_, b), AllOf(HasSubstr("magic"), HasSubstr("not a GGUF file")));
}

TEST_F(GgufFileTest, Versions) {
  std::vector<uint8_t> b = bytes_;
  Poke<uint32_t>(&b, 4, 1);
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("unsupported version 1"));
  Poke<uint32_t>(&b, 4, 4);
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("unsupported version 4"));
  Poke<uint32_t>(&b, 4, 0x03000000);
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("big-endian"));
  // Version 2 has the same layout as version 3 for little-endian files.
  Poke<uint32_t>(&b, 4, 2);
  WriteBytes(bad_, b);
  auto f = GgufFile::Open(bad_);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ((*f)->tensors().size(), 2u);
}

TEST_F(GgufFileTest, EveryTruncationIsAnError) {
  // The last tensor ends the file (see MakeSmallFile), so no proper prefix
  // is a valid file.
  auto f = GgufFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorInfo& last = (*f)->tensors().back();
  ASSERT_EQ(last.n_bytes, 32u);
  ASSERT_EQ(std::memcmp(last.data, bytes_.data() + bytes_.size() - 32, 32), 0);
  for (size_t n = 0; n < bytes_.size(); ++n) {
    WriteBytes(bad_, bytes_, n);
    absl::StatusOr<std::unique_ptr<GgufFile>> t = GgufFile::Open(bad_);
    ASSERT_FALSE(t.ok()) << "prefix of " << n << " bytes opened";
    ASSERT_THAT(t.status().message(), HasSubstr(bad_)) << n;
  }
}

TEST_F(GgufFileTest, CorruptedBytesNeverCrash) {
  // Each byte of the header, metadata and tensor infos in turn is
  // overwritten; the file must either fail to open or open with every
  // tensor readable (data inside the mapping). The tensor data, the last
  // 192 bytes, holds no structure.
  int opened = 0;
  for (size_t i = 0; i + 192 < bytes_.size(); ++i) {
    for (uint8_t v : {uint8_t{0x00}, uint8_t{0xFF}}) {
      std::vector<uint8_t> b = bytes_;
      if (b[i] == v) continue;
      b[i] = v;
      WriteBytes(bad_, b);
      absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(bad_);
      if (!f.ok()) continue;
      ++opened;
      for (const TensorInfo& t : (*f)->tensors()) {
        std::vector<float> y(static_cast<size_t>(t.n_elements()));
        ASSERT_TRUE(DequantizeRow(t.type, t.data, y.data(), t.n_elements()).ok());
      }
    }
  }
  EXPECT_GT(opened, 0);  // e.g. changed string contents leave a valid file
}

TEST_F(GgufFileTest, TensorDataPastEndOfFile) {
  std::vector<uint8_t> b = bytes_;
  const InfoFields norm = LocateInfo(b, kNormName);
  Poke<uint64_t>(&b, norm.offset, 192);  // one alignment unit too far
  EXPECT_THAT(OpenError(bad_, b), AllOf(HasSubstr("tensor 'tensor.norm'"), HasSubstr("32 bytes"),
                                        HasSubstr("extends past end of file")));
  Poke<uint64_t>(&b, norm.offset, ~uint64_t{31});  // aligned, and overflows when added
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("extends past end of file"));
}

TEST_F(GgufFileTest, MisalignedTensorOffset) {
  std::vector<uint8_t> b = bytes_;
  Poke<uint64_t>(&b, LocateInfo(b, kNormName).offset, 161);
  EXPECT_THAT(OpenError(bad_, b), AllOf(HasSubstr("tensor 'tensor.norm'"), HasSubstr("161"),
                                        HasSubstr("alignment 32")));
}

TEST_F(GgufFileTest, BadAlignmentValue) {
  // general.alignment is a u32 right after its key and value type.
  const size_t value_at = FindBytes(bytes_, "general.alignment") + 17 + 4;
  ASSERT_EQ(Peek<uint32_t>(bytes_, value_at), 32u);
  for (uint32_t bad : {0u, 33u, 48u}) {
    std::vector<uint8_t> b = bytes_;
    Poke<uint32_t>(&b, value_at, bad);
    EXPECT_THAT(OpenError(bad_, b),
                AllOf(HasSubstr("general.alignment"), HasSubstr("not a power of two")))
        << bad;
  }
  // A larger power of two is valid but misaligns the tensor offsets.
  std::vector<uint8_t> b = bytes_;
  Poke<uint32_t>(&b, value_at, 64);
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("alignment 64"));
  // The wrong value type.
  b = bytes_;
  Poke<uint32_t>(&b, value_at - 4, static_cast<uint32_t>(ValueType::kFloat32));
  EXPECT_THAT(OpenError(bad_, b), AllOf(HasSubstr("general.alignment"), HasSubstr("float32")));
}

TEST_F(GgufFileTest, UnsupportedTensorTypes) {
  std::vector<uint8_t> b = bytes_;
  const InfoFields q = LocateInfo(b, kQuantName);
  Poke<uint32_t>(&b, q.type, 99);
  EXPECT_THAT(OpenError(bad_, b),
              AllOf(HasSubstr("tensor 'tensor.quant'"), HasSubstr("unsupported tensor type 99")));
  Poke<uint32_t>(&b, q.type, static_cast<uint32_t>(GgmlType::kQ8_K));
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("unsupported tensor type 15 (Q8_K)"));
}

TEST_F(GgufFileTest, BadShapes) {
  const InfoFields q = LocateInfo(bytes_, kQuantName);
  std::vector<uint8_t> b = bytes_;
  Poke<uint64_t>(&b, q.dims + 8, 0);
  EXPECT_THAT(OpenError(bad_, b), AllOf(HasSubstr("tensor 'tensor.quant'"),
                                        HasSubstr("dimension 1 has invalid size 0")));
  b = bytes_;
  Poke<uint64_t>(&b, q.dims + 8, ~uint64_t{0});  // -1 as int64
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("invalid size -1"));
  b = bytes_;
  Poke<uint64_t>(&b, q.dims, uint64_t{1} << 40);
  Poke<uint64_t>(&b, q.dims + 8, uint64_t{1} << 40);
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("too many elements"));
  b = bytes_;
  Poke<uint64_t>(&b, q.dims, 48);  // Q8_0 rows must be whole 32-value blocks
  EXPECT_THAT(OpenError(bad_, b), AllOf(HasSubstr("row length 48"), HasSubstr("Q8_0")));
  b = bytes_;
  Poke<uint32_t>(&b, q.n_dims, 5);
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("dimension count 5"));
  b = bytes_;
  Poke<uint32_t>(&b, q.n_dims, 0);
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("dimension count 0"));
}

TEST_F(GgufFileTest, HugeLengthsAndCountsDoNotAllocate) {
  std::vector<uint8_t> b = bytes_;
  const size_t key_len_at = FindBytes(b, "general.architecture") - 8;
  Poke<uint64_t>(&b, key_len_at, uint64_t{1} << 62);
  EXPECT_THAT(OpenError(bad_, b),
              AllOf(HasSubstr("metadata key #0"), HasSubstr("string length 4611686018427387904")));

  b = bytes_;
  // t.strings: key, u32 type (array), u32 element type, u64 count.
  const size_t count_at = FindBytes(b, "t.strings") + 9 + 4 + 4;
  ASSERT_EQ(Peek<uint64_t>(b, count_at), 3u);
  Poke<uint64_t>(&b, count_at, ~uint64_t{0} / 2);
  EXPECT_THAT(OpenError(bad_, b),
              AllOf(HasSubstr("metadata 't.strings'"), HasSubstr("cannot fit")));

  b = bytes_;
  Poke<uint64_t>(&b, 8, ~uint64_t{0});  // tensor count
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("tensor count"));
  b = bytes_;
  Poke<uint64_t>(&b, 16, uint64_t{1} << 40);  // metadata count
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("metadata count"));

  b = bytes_;
  const InfoFields n = LocateInfo(b, kNormName);
  Poke<uint64_t>(&b, n.name_len, 1000000);
  EXPECT_THAT(OpenError(bad_, b), AllOf(HasSubstr("tensor #1 name"), HasSubstr("string length")));
}

TEST_F(GgufFileTest, UnknownValueTypes) {
  std::vector<uint8_t> b = bytes_;
  const size_t type_at = FindBytes(b, "t.u8") + 4;
  Poke<uint32_t>(&b, type_at, 13);
  EXPECT_THAT(OpenError(bad_, b),
              AllOf(HasSubstr("metadata 't.u8'"), HasSubstr("unknown value type 13")));
  b = bytes_;
  const size_t elem_type_at = FindBytes(b, "t.ints") + 6 + 4;
  Poke<uint32_t>(&b, elem_type_at, 1000);
  EXPECT_THAT(OpenError(bad_, b), HasSubstr("unknown array element type 1000"));
}

TEST_F(GgufFileTest, DuplicateKeysAndTensorNames) {
  std::vector<uint8_t> b = bytes_;
  b[FindBytes(b, "t.u8") + 2] = 'i';  // "t.u8" becomes a second "t.i8"
  EXPECT_THAT(OpenError(bad_, b), AllOf(HasSubstr("metadata 't.i8'"), HasSubstr("duplicate key")));

  // Names of equal length, made equal after writing.
  GgufWriter w;
  w.AddRawTensor("same", {8}, GgmlType::kF32, std::vector<uint8_t>(32));
  w.AddRawTensor("sbme", {8}, GgmlType::kF32, std::vector<uint8_t>(32));
  ASSERT_TRUE(w.Write(bad_).ok());
  b = ReadBytes(bad_);
  ASSERT_TRUE(GgufFile::Open(bad_).ok());
  b[FindBytes(b, "sbme") + 1] = 'a';
  EXPECT_THAT(OpenError(bad_, b),
              AllOf(HasSubstr("tensor 'same'"), HasSubstr("duplicate tensor name")));
}

TEST_F(GgufFileTest, DeeplyNestedArraysAreRejected) {
  auto nest = [](int depth) {
    MetadataValue v{ValueType::kUint8, uint64_t{7}};
    for (int i = 0; i < depth; ++i) v = MetadataValue{ValueType::kArray, MetadataArray{v}};
    return v;
  };
  GgufWriter ok;
  ok.Set("deep", nest(10));
  ASSERT_TRUE(ok.Write(bad_).ok());
  auto f = GgufFile::Open(bad_);
  ASSERT_TRUE(f.ok()) << f.status();

  GgufWriter w;
  w.Set("deep", nest(100));
  ASSERT_TRUE(w.Write(bad_).ok());
  f = GgufFile::Open(bad_);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), AllOf(HasSubstr("metadata 'deep'"), HasSubstr("nested")));
}

TEST_F(GgufFileTest, TruncationErrorsNameTheField) {
  auto err = [&](size_t n) {
    WriteBytes(bad_, bytes_, n);
    return std::string(GgufFile::Open(bad_).status().message());
  };
  EXPECT_THAT(err(2), AllOf(HasSubstr("magic"), HasSubstr("truncated")));
  EXPECT_THAT(err(6), HasSubstr("version"));
  EXPECT_THAT(err(12), HasSubstr("tensor count"));
  // t.strings holds "a", "", "ccc" after key (9), type, element type and
  // count (16); cut inside the bytes of "ccc".
  const size_t strings = FindBytes(bytes_, "t.strings") + 9 + 16;
  EXPECT_THAT(err(strings + 9 + 8 + 8 + 1),
              AllOf(HasSubstr("metadata 't.strings'[2]"), HasSubstr("string length 3")));
  // t.nested's elements start after key (8), type, element type and count;
  // the first inner array takes 16 bytes; cut in the second one's length.
  const size_t nested = FindBytes(bytes_, "t.nested") + 8 + 16;
  EXPECT_THAT(err(nested + 16 + 4 + 6), HasSubstr("metadata 't.nested'[1] array length"));
  EXPECT_THAT(err(LocateInfo(bytes_, kNormName).offset + 2),
              HasSubstr("tensor 'tensor.norm' data offset"));
}

}  // namespace
}  // namespace kvserve::gguf
