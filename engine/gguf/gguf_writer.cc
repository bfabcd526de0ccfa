#include "engine/gguf/gguf_writer.h"

#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/gguf/dequantize.h"

namespace kvserve::gguf {
namespace {

// Abseil here is built with its own string_view type, which StrCat does not
// accept from std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;

// Appends little-endian encodings to a byte buffer.
class Encoder {
 public:
  template <typename T>
  void Pod(T v) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void String(const std::string& s) {
    Pod<uint64_t>(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }
  std::vector<uint8_t>& bytes() { return out_; }

 private:
  std::vector<uint8_t> out_;
};

// Checks that `v` holds an integer in [lo, hi] and returns it widened.
absl::StatusOr<int64_t> SignedIn(const MetadataValue& v, int64_t lo, int64_t hi) {
  if (const auto* i = std::get_if<int64_t>(&v.value); i != nullptr && *i >= lo && *i <= hi) {
    return *i;
  }
  if (const auto* u = std::get_if<uint64_t>(&v.value);
      u != nullptr && *u <= static_cast<uint64_t>(hi)) {
    return static_cast<int64_t>(*u);
  }
  return absl::InvalidArgumentError("does not hold an integer in range for its type");
}

absl::StatusOr<uint64_t> UnsignedUpTo(const MetadataValue& v, uint64_t hi) {
  if (const auto* u = std::get_if<uint64_t>(&v.value); u != nullptr && *u <= hi) return *u;
  if (const auto* i = std::get_if<int64_t>(&v.value);
      i != nullptr && *i >= 0 && static_cast<uint64_t>(*i) <= hi) {
    return static_cast<uint64_t>(*i);
  }
  return absl::InvalidArgumentError("does not hold an integer in range for its type");
}

// Encodes the payload of `v` (not its type tag). The variant must match
// v.type; integers may be held in either integer alternative if they fit.
absl::Status EncodeValue(const MetadataValue& v, Encoder* e) {
  auto unsigned_up_to = [&](uint64_t hi) -> absl::StatusOr<uint64_t> {
    return UnsignedUpTo(v, hi);
  };
  switch (v.type) {
    case ValueType::kUint8: {
      absl::StatusOr<uint64_t> x = unsigned_up_to(std::numeric_limits<uint8_t>::max());
      if (!x.ok()) return x.status();
      e->Pod(static_cast<uint8_t>(*x));
      return absl::OkStatus();
    }
    case ValueType::kUint16: {
      absl::StatusOr<uint64_t> x = unsigned_up_to(std::numeric_limits<uint16_t>::max());
      if (!x.ok()) return x.status();
      e->Pod(static_cast<uint16_t>(*x));
      return absl::OkStatus();
    }
    case ValueType::kUint32: {
      absl::StatusOr<uint64_t> x = unsigned_up_to(std::numeric_limits<uint32_t>::max());
      if (!x.ok()) return x.status();
      e->Pod(static_cast<uint32_t>(*x));
      return absl::OkStatus();
    }
    case ValueType::kUint64: {
      absl::StatusOr<uint64_t> x = unsigned_up_to(std::numeric_limits<uint64_t>::max());
      if (!x.ok()) return x.status();
      e->Pod(*x);
      return absl::OkStatus();
    }
    case ValueType::kInt8: {
      absl::StatusOr<int64_t> x = SignedIn(v, INT8_MIN, INT8_MAX);
      if (!x.ok()) return x.status();
      e->Pod(static_cast<int8_t>(*x));
      return absl::OkStatus();
    }
    case ValueType::kInt16: {
      absl::StatusOr<int64_t> x = SignedIn(v, INT16_MIN, INT16_MAX);
      if (!x.ok()) return x.status();
      e->Pod(static_cast<int16_t>(*x));
      return absl::OkStatus();
    }
    case ValueType::kInt32: {
      absl::StatusOr<int64_t> x = SignedIn(v, INT32_MIN, INT32_MAX);
      if (!x.ok()) return x.status();
      e->Pod(static_cast<int32_t>(*x));
      return absl::OkStatus();
    }
    case ValueType::kInt64: {
      absl::StatusOr<int64_t> x = SignedIn(v, INT64_MIN, INT64_MAX);
      if (!x.ok()) return x.status();
      e->Pod(*x);
      return absl::OkStatus();
    }
    case ValueType::kFloat32:
    case ValueType::kFloat64: {
      const auto* d = std::get_if<double>(&v.value);
      if (d == nullptr) return absl::InvalidArgumentError("does not hold a double");
      if (v.type == ValueType::kFloat32) {
        e->Pod(static_cast<float>(*d));
      } else {
        e->Pod(*d);
      }
      return absl::OkStatus();
    }
    case ValueType::kBool: {
      const auto* b = std::get_if<bool>(&v.value);
      if (b == nullptr) return absl::InvalidArgumentError("does not hold a bool");
      e->Pod(static_cast<uint8_t>(*b ? 1 : 0));
      return absl::OkStatus();
    }
    case ValueType::kString: {
      const auto* s = std::get_if<std::string>(&v.value);
      if (s == nullptr) return absl::InvalidArgumentError("does not hold a string");
      e->String(*s);
      return absl::OkStatus();
    }
    case ValueType::kArray: {
      const auto* a = std::get_if<MetadataArray>(&v.value);
      if (a == nullptr) return absl::InvalidArgumentError("does not hold an array");
      // The element type of an empty array is not recorded in MetadataValue;
      // any type reads back as an empty array.
      const ValueType et = a->empty() ? ValueType::kUint8 : (*a)[0].type;
      e->Pod(static_cast<uint32_t>(et));
      e->Pod(static_cast<uint64_t>(a->size()));
      for (size_t i = 0; i < a->size(); ++i) {
        if ((*a)[i].type != et) {
          return absl::InvalidArgumentError(
              absl::StrCat("array element ", i, " differs in type from element 0"));
        }
        if (absl::Status s = EncodeValue((*a)[i], e); !s.ok()) {
          return absl::InvalidArgumentError(absl::StrCat("array element ", i, " ", s.message()));
        }
      }
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("has unknown value type ", static_cast<uint32_t>(v.type)));
}

MetadataValue Unsigned(ValueType t, uint64_t v) { return MetadataValue{t, v}; }
MetadataValue Signed(ValueType t, int64_t v) { return MetadataValue{t, v}; }

}  // namespace

void GgufWriter::Set(const std::string& key, const MetadataValue& v) {
  for (auto& [k, old] : kv_) {
    if (k == key) {
      old = v;
      return;
    }
  }
  kv_.emplace_back(key, v);
}

void GgufWriter::SetString(const std::string& key, const std::string& v) {
  Set(key, MetadataValue{ValueType::kString, v});
}
void GgufWriter::SetUint32(const std::string& key, uint32_t v) {
  Set(key, Unsigned(ValueType::kUint32, v));
}
void GgufWriter::SetInt32(const std::string& key, int32_t v) {
  Set(key, Signed(ValueType::kInt32, v));
}
void GgufWriter::SetUint64(const std::string& key, uint64_t v) {
  Set(key, Unsigned(ValueType::kUint64, v));
}
void GgufWriter::SetFloat32(const std::string& key, float v) {
  Set(key, MetadataValue{ValueType::kFloat32, static_cast<double>(v)});
}
void GgufWriter::SetBool(const std::string& key, bool v) {
  Set(key, MetadataValue{ValueType::kBool, v});
}
void GgufWriter::SetStringArray(const std::string& key, const std::vector<std::string>& v) {
  MetadataArray a;
  a.reserve(v.size());
  for (const std::string& s : v) a.push_back(MetadataValue{ValueType::kString, s});
  Set(key, MetadataValue{ValueType::kArray, std::move(a)});
}
void GgufWriter::SetInt32Array(const std::string& key, const std::vector<int32_t>& v) {
  MetadataArray a;
  a.reserve(v.size());
  for (int32_t x : v) a.push_back(Signed(ValueType::kInt32, x));
  Set(key, MetadataValue{ValueType::kArray, std::move(a)});
}
void GgufWriter::SetFloat32Array(const std::string& key, const std::vector<float>& v) {
  MetadataArray a;
  a.reserve(v.size());
  for (float x : v) a.push_back(MetadataValue{ValueType::kFloat32, static_cast<double>(x)});
  Set(key, MetadataValue{ValueType::kArray, std::move(a)});
}

absl::Status GgufWriter::AddTensor(const std::string& name, const std::vector<int64_t>& shape,
                                   GgmlType type, const std::vector<float>& values) {
  if (shape.empty() || shape.size() > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddTensor '", name, "': ", shape.size(), " dimensions, expected 1..4"));
  }
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d <= 0 || __builtin_mul_overflow(n, d, &n)) {
      return absl::InvalidArgumentError(absl::StrCat("AddTensor '", name, "': bad shape"));
    }
  }
  if (static_cast<int64_t>(values.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddTensor '", name, "': ", values.size(), " values for ", n, " elements"));
  }
  const int64_t block = BlockElements(type);
  if (block == 0 || shape[0] % block != 0) {
    return absl::InvalidArgumentError(absl::StrCat("AddTensor '", name, "': row length ", shape[0],
                                                   " does not suit type ", Sv(TypeName(type))));
  }
  const size_t row_bytes = RowBytes(type, shape[0]);
  const int64_t rows = n / shape[0];
  std::vector<uint8_t> bytes(row_bytes * static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    absl::Status s = QuantizeRow(type, values.data() + r * shape[0],
                                 bytes.data() + static_cast<size_t>(r) * row_bytes, shape[0]);
    if (!s.ok())
      return absl::InvalidArgumentError(absl::StrCat("AddTensor '", name, "': ", s.message()));
  }
  AddRawTensor(name, shape, type, std::move(bytes));
  return absl::OkStatus();
}

void GgufWriter::AddRawTensor(const std::string& name, const std::vector<int64_t>& shape,
                              GgmlType type, std::vector<uint8_t> bytes) {
  tensors_.push_back(Tensor{name, shape, type, std::move(bytes)});
}

absl::Status GgufWriter::Write(const std::string& path, uint32_t alignment) const {
  auto fail = [&](std::string_view msg) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", Sv(msg)));
  };
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return fail(absl::StrCat("alignment ", alignment, " is not a power of two"));
  }

  // The alignment is recorded in the file unless it is the default.
  std::vector<std::pair<std::string, MetadataValue>> kv = kv_;
  bool has_alignment = false;
  for (const auto& [k, v] : kv) {
    if (k != "general.alignment") continue;
    has_alignment = true;
    absl::StatusOr<uint64_t> a = UnsignedUpTo(v, std::numeric_limits<uint64_t>::max());
    if (!a.ok() || *a != alignment) {
      return fail(
          absl::StrCat("metadata 'general.alignment' disagrees with alignment ", alignment));
    }
  }
  if (!has_alignment && alignment != kDefaultAlignment) {
    kv.emplace_back("general.alignment", Unsigned(ValueType::kUint32, alignment));
  }

  Encoder e;
  e.Pod<uint32_t>(0x46554747);  // "GGUF"
  e.Pod<uint32_t>(kVersion);
  e.Pod<uint64_t>(tensors_.size());
  e.Pod<uint64_t>(kv.size());
  for (const auto& [k, v] : kv) {
    e.String(k);
    e.Pod(static_cast<uint32_t>(v.type));
    if (absl::Status s = EncodeValue(v, &e); !s.ok()) {
      return fail(absl::StrCat("metadata '", k, "' ", s.message()));
    }
  }

  auto pad = [&](uint64_t n) { return (alignment - n % alignment) % alignment; };
  std::unordered_set<std::string> names;
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    const std::string what = absl::StrCat("tensor '", t.name, "'");
    if (!names.insert(t.name).second) return fail(absl::StrCat(what, ": duplicate name"));
    if (t.shape.empty() || t.shape.size() > 4) return fail(absl::StrCat(what, ": bad rank"));
    int64_t n = 1;
    for (int64_t d : t.shape) {
      if (d <= 0 || __builtin_mul_overflow(n, d, &n)) {
        return fail(absl::StrCat(what, ": bad shape"));
      }
    }
    const int64_t block = BlockElements(t.type);
    if (block == 0 || t.shape[0] % block != 0) {
      return fail(absl::StrCat(what, ": row length ", t.shape[0], " does not suit type ",
                               Sv(TypeName(t.type))));
    }
    const size_t expect = static_cast<size_t>(n / block) * BlockBytes(t.type);
    if (t.bytes.size() != expect) {
      return fail(absl::StrCat(what, ": ", t.bytes.size(), " bytes of data, expected ", expect));
    }
    e.String(t.name);
    e.Pod<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) e.Pod<uint64_t>(static_cast<uint64_t>(d));
    e.Pod<uint32_t>(static_cast<uint32_t>(t.type));
    e.Pod<uint64_t>(offset);
    offset += t.bytes.size() + pad(t.bytes.size());
  }
  e.bytes().resize(e.bytes().size() + pad(e.bytes().size()), 0);

  // Written to a temporary name and renamed, so that a reader never sees a
  // half-written file at `path`.
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::UnavailableError(
        absl::StrCat(tmp, ": cannot open for writing: ", std::strerror(errno)));
  }
  bool ok = std::fwrite(e.bytes().data(), 1, e.bytes().size(), f) == e.bytes().size();
  static const uint8_t kZeros[256] = {};
  for (const Tensor& t : tensors_) {
    if (!ok) break;
    ok = std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
    // Every tensor, the last included, is padded to the alignment, as other
    // GGUF writers do.
    for (uint64_t left = pad(t.bytes.size()); ok && left > 0;) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(left, sizeof kZeros));
      ok = std::fwrite(kZeros, 1, chunk, f) == chunk;
      left -= chunk;
    }
  }
  const int write_errno = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat(tmp, ": write failed: ", std::strerror(write_errno)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat(path, ": cannot rename from ", tmp, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace kvserve::gguf
