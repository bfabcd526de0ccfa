#include "engine/gguf/gguf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvserve::gguf {
namespace {

// Abseil here is built with its own string_view type, which StrCat does not
// accept from std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS
// Arrays may nest, but nothing real nests deeply; the limit keeps a hostile
// file from recursing the parser off the stack.
constexpr int kMaxArrayDepth = 16;

// Smallest encoding of one value of each type, used to reject element and
// entry counts that the remaining bytes cannot hold before allocating.
size_t MinEncodedSize(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
    case ValueType::kString:  // the u64 length
      return 8;
    case ValueType::kArray:  // u32 element type + u64 count
      return 12;
  }
  return 1;
}

bool IsKnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kFloat64); }

std::string ValueTypeName(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
      return "uint8";
    case ValueType::kInt8:
      return "int8";
    case ValueType::kUint16:
      return "uint16";
    case ValueType::kInt16:
      return "int16";
    case ValueType::kUint32:
      return "uint32";
    case ValueType::kInt32:
      return "int32";
    case ValueType::kFloat32:
      return "float32";
    case ValueType::kBool:
      return "bool";
    case ValueType::kString:
      return "string";
    case ValueType::kArray:
      return "array";
    case ValueType::kUint64:
      return "uint64";
    case ValueType::kInt64:
      return "int64";
    case ValueType::kFloat64:
      return "float64";
  }
  return absl::StrCat("value type ", static_cast<uint32_t>(t));
}

// Bounds-checked little-endian reads from the mapping. Every read either
// fits in the file or fails without moving.
class Reader {
 public:
  Reader(const uint8_t* base, size_t size) : base_(base), size_(size) {}

  size_t pos() const { return pos_; }
  size_t size() const { return size_; }
  size_t remaining() const { return size_ - pos_; }

  bool Skip(size_t n, const uint8_t** at) {
    if (n > remaining()) {
      want_ = n;
      return false;
    }
    *at = base_ + pos_;
    pos_ += n;
    return true;
  }
  template <typename T>
  bool Pod(T* out) {
    const uint8_t* at;
    if (!Skip(sizeof(T), &at)) return false;
    std::memcpy(out, at, sizeof(T));
    return true;
  }
  // The number of bytes the last failed read wanted.
  size_t want() const { return want_; }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  size_t want_ = 0;
};

// Names the field being read, for error messages; built into a string only
// when an error is reported, since vocabularies hold tens of thousands of
// array elements.
struct Ctx {
  std::string_view name;        // e.g. "metadata 'a.b'"
  std::string_view part;        // optional suffix, e.g. " array length"
  int64_t index = -1;           // array element index, or -1
  const Ctx* parent = nullptr;  // enclosing array element, for nested arrays

  static Ctx Named(std::string_view n) {
    Ctx c;
    c.name = n;
    return c;
  }
  static Ctx Element(const Ctx* parent, int64_t i) {
    Ctx c;
    c.parent = parent;
    c.index = i;
    return c;
  }

  std::string Str() const {
    std::string s = parent != nullptr ? parent->Str() : std::string(name);
    if (index >= 0) absl::StrAppend(&s, "[", index, "]");
    absl::StrAppend(&s, Sv(part));
    return s;
  }
};

class Parser {
 public:
  Parser(const std::string& path, Reader* r) : path_(path), r_(*r) {}

  absl::Status Error(std::string_view what, std::string_view msg) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", Sv(what), ": ", Sv(msg)));
  }
  absl::Status Error(const Ctx& what, std::string_view msg) const { return Error(what.Str(), msg); }
  absl::Status Truncated(const Ctx& what) const {
    return Error(what, absl::StrCat("file truncated (need ", r_.want(), " bytes at offset ",
                                    r_.pos(), ", file size ", r_.size(), ")"));
  }

  template <typename T>
  absl::Status Read(const Ctx& what, T* out) {
    if (!r_.Pod(out)) return Truncated(what);
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status Read(std::string_view what, T* out) {
    return Read(Ctx::Named(what), out);
  }

  absl::Status ReadString(const Ctx& what, std::string* out) {
    uint64_t len = 0;
    if (!r_.Pod(&len)) return Truncated(what);
    // Checked before any allocation so that a corrupt length cannot ask for
    // gigabytes.
    if (len > r_.remaining()) {
      return Error(what, absl::StrCat("string length ", len, " exceeds the ", r_.remaining(),
                                      " bytes left in the file (at offset ", r_.pos(), ")"));
    }
    const uint8_t* at;
    r_.Skip(static_cast<size_t>(len), &at);
    out->assign(reinterpret_cast<const char*>(at), static_cast<size_t>(len));
    return absl::OkStatus();
  }
  absl::Status ReadString(std::string_view what, std::string* out) {
    return ReadString(Ctx::Named(what), out);
  }

  // Reads one value of type t (already read from the file).
  absl::Status ReadValue(ValueType t, const Ctx& what, int depth, MetadataValue* out) {
    out->type = t;
    switch (t) {
      case ValueType::kUint8:
        return ReadUnsigned<uint8_t>(what, out);
      case ValueType::kUint16:
        return ReadUnsigned<uint16_t>(what, out);
      case ValueType::kUint32:
        return ReadUnsigned<uint32_t>(what, out);
      case ValueType::kUint64:
        return ReadUnsigned<uint64_t>(what, out);
      case ValueType::kInt8:
        return ReadSigned<int8_t>(what, out);
      case ValueType::kInt16:
        return ReadSigned<int16_t>(what, out);
      case ValueType::kInt32:
        return ReadSigned<int32_t>(what, out);
      case ValueType::kInt64:
        return ReadSigned<int64_t>(what, out);
      case ValueType::kFloat32: {
        float v = 0;
        if (absl::Status s = Read(what, &v); !s.ok()) return s;
        out->value = static_cast<double>(v);
        return absl::OkStatus();
      }
      case ValueType::kFloat64: {
        double v = 0;
        if (absl::Status s = Read(what, &v); !s.ok()) return s;
        out->value = v;
        return absl::OkStatus();
      }
      case ValueType::kBool: {
        uint8_t v = 0;
        if (absl::Status s = Read(what, &v); !s.ok()) return s;
        out->value = v != 0;
        return absl::OkStatus();
      }
      case ValueType::kString: {
        std::string v;
        if (absl::Status s = ReadString(what, &v); !s.ok()) return s;
        out->value = std::move(v);
        return absl::OkStatus();
      }
      case ValueType::kArray:
        return ReadArray(what, depth, out);
    }
    return Error(what, absl::StrCat("unknown value type ", static_cast<uint32_t>(t)));
  }

 private:
  template <typename T>
  absl::Status ReadUnsigned(const Ctx& what, MetadataValue* out) {
    T v = 0;
    if (absl::Status s = Read(what, &v); !s.ok()) return s;
    out->value = static_cast<uint64_t>(v);
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status ReadSigned(const Ctx& what, MetadataValue* out) {
    T v = 0;
    if (absl::Status s = Read(what, &v); !s.ok()) return s;
    out->value = static_cast<int64_t>(v);
    return absl::OkStatus();
  }

  absl::Status ReadArray(const Ctx& what, int depth, MetadataValue* out) {
    if (depth >= kMaxArrayDepth) {
      return Error(what, absl::StrCat("arrays nested deeper than ", kMaxArrayDepth, " levels"));
    }
    uint32_t elem_type = 0;
    uint64_t count = 0;
    Ctx part = what;
    part.part = " array element type";
    if (absl::Status s = Read(part, &elem_type); !s.ok()) return s;
    if (!IsKnownValueType(elem_type)) {
      return Error(what, absl::StrCat("unknown array element type ", elem_type));
    }
    part.part = " array length";
    if (absl::Status s = Read(part, &count); !s.ok()) return s;
    const ValueType et = static_cast<ValueType>(elem_type);
    if (count > r_.remaining() / MinEncodedSize(et)) {
      return Error(what, absl::StrCat("array of ", count, " ", ValueTypeName(et),
                                      " values cannot fit in the ", r_.remaining(),
                                      " bytes left in the file"));
    }
    MetadataArray elems(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
      const Ctx elem = Ctx::Element(&what, static_cast<int64_t>(i));
      if (absl::Status s = ReadValue(et, elem, depth + 1, &elems[i]); !s.ok()) return s;
    }
    out->value = std::move(elems);
    return absl::OkStatus();
  }

  const std::string& path_;
  Reader& r_;
};

absl::Status Errno(const std::string& path, std::string_view what) {
  const int e = errno;
  const std::string msg = absl::StrCat(path, ": ", Sv(what), ": ", std::strerror(e));
  switch (e) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("{", absl::StrJoin(shape, ", "), "}");
}

}  // namespace

int64_t TensorInfo::n_elements() const {
  if (shape.empty()) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) return Errno(path, "cannot open");
  struct stat st;
  if (::fstat(f->fd_, &st) != 0) return Errno(path, "cannot stat");
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (st.st_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header: file is empty (0 bytes), not a GGUF file"));
  }
  void* m = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, f->fd_, 0);
  if (m == MAP_FAILED) return Errno(path, "cannot mmap");
  f->base_ = static_cast<const uint8_t*>(m);
  f->size_ = static_cast<size_t>(st.st_size);
  if (absl::Status s = f->Parse(); !s.ok()) return s;
  return f;
}

GgufFile::~GgufFile() {
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
  if (fd_ >= 0) ::close(fd_);
}

absl::Status GgufFile::Parse() {
  Reader r(base_, size_);
  Parser p(path_, &r);

  // ---- Header.
  uint32_t magic = 0;
  if (absl::Status s = p.Read("magic", &magic); !s.ok()) return s;
  if (magic != kMagic) {
    return p.Error("magic", absl::StrCat("bad magic 0x", absl::Hex(magic, absl::kZeroPad8),
                                         " (expected \"GGUF\"); not a GGUF file"));
  }
  if (absl::Status s = p.Read("version", &version_); !s.ok()) return s;
  if (version_ == 0x02000000u || version_ == 0x03000000u) {
    return p.Error("version", "big-endian GGUF files are not supported");
  }
  if (version_ != 2 && version_ != 3) {
    return p.Error("version", absl::StrCat("unsupported version ", version_,
                                           " (only GGUF versions 2 and 3 are supported)"));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  if (absl::Status s = p.Read("tensor count", &n_tensors); !s.ok()) return s;
  if (absl::Status s = p.Read("metadata count", &n_kv); !s.ok()) return s;
  // Counts are checked against the bytes left before anything is reserved: a
  // metadata entry takes at least 13 bytes (key length, value type, one byte
  // of value), a tensor info at least 32 (name length, dimension count, one
  // dimension, type, offset).
  if (n_kv > r.remaining() / 13) {
    return p.Error("metadata count",
                   absl::StrCat(n_kv, " entries cannot fit in a file of ", size_, " bytes"));
  }
  if (n_tensors > r.remaining() / 32) {
    return p.Error("tensor count",
                   absl::StrCat(n_tensors, " tensors cannot fit in a file of ", size_, " bytes"));
  }

  // ---- Metadata.
  std::unordered_set<std::string> keys;
  metadata_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    const std::string key_what = absl::StrCat("metadata key #", i);
    if (absl::Status s = p.ReadString(key_what, &key); !s.ok()) return s;
    const std::string what = absl::StrCat("metadata '", key, "'");
    if (!keys.insert(key).second) return p.Error(what, "duplicate key");
    uint32_t type = 0;
    if (absl::Status s = p.Read(absl::StrCat(what, " value type"), &type); !s.ok()) return s;
    if (!IsKnownValueType(type)) {
      return p.Error(what, absl::StrCat("unknown value type ", type));
    }
    MetadataValue v;
    if (absl::Status s = p.ReadValue(static_cast<ValueType>(type), Ctx::Named(what), 0, &v);
        !s.ok()) {
      return s;
    }
    metadata_.emplace_back(std::move(key), std::move(v));
  }

  if (Has("general.alignment")) {
    absl::StatusOr<uint64_t> a = GetUint("general.alignment");
    if (!a.ok()) return a.status();
    if (*a == 0 || (*a & (*a - 1)) != 0) {
      return p.Error("metadata 'general.alignment'",
                     absl::StrCat("alignment ", *a, " is not a power of two"));
    }
    alignment_ = *a;
  }

  // ---- Tensor infos.
  std::unordered_set<std::string> names;
  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    if (absl::Status s = p.ReadString(absl::StrCat("tensor #", i, " name"), &t.name); !s.ok()) {
      return s;
    }
    const std::string what = absl::StrCat("tensor '", t.name, "'");
    if (!names.insert(t.name).second) return p.Error(what, "duplicate tensor name");
    uint32_t n_dims = 0;
    if (absl::Status s = p.Read(absl::StrCat(what, " dimension count"), &n_dims); !s.ok()) {
      return s;
    }
    if (n_dims == 0 || n_dims > kMaxDims) {
      return p.Error(what, absl::StrCat("dimension count ", n_dims, " is not in 1..", kMaxDims));
    }
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      if (absl::Status s = p.Read(absl::StrCat(what, " dimension ", d), &dim); !s.ok()) return s;
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return p.Error(
            what, absl::StrCat("dimension ", d, " has invalid size ", static_cast<int64_t>(dim)));
      }
      t.shape.push_back(static_cast<int64_t>(dim));
      if (__builtin_mul_overflow(n_elements, static_cast<int64_t>(dim), &n_elements)) {
        return p.Error(what,
                       absl::StrCat("shape ", ShapeString(t.shape), " has too many elements"));
      }
    }
    uint32_t type = 0;
    if (absl::Status s = p.Read(absl::StrCat(what, " type"), &type); !s.ok()) return s;
    t.type = static_cast<GgmlType>(type);
    if (!IsSupportedType(t.type)) {
      return p.Error(
          what, absl::StrCat("unsupported tensor type ", type, " (", Sv(TypeName(t.type)), ")"));
    }
    const int64_t block = BlockElements(t.type);
    if (t.shape[0] % block != 0) {
      return p.Error(what, absl::StrCat("row length ", t.shape[0], " is not a multiple of the ",
                                        Sv(TypeName(t.type)), " block size ", block));
    }
    const uint64_t n_blocks = static_cast<uint64_t>(n_elements / block);
    uint64_t n_bytes;
    if (__builtin_mul_overflow(n_blocks, static_cast<uint64_t>(BlockBytes(t.type)), &n_bytes)) {
      return p.Error(what, absl::StrCat("shape ", ShapeString(t.shape), " is too large"));
    }
    t.n_bytes = static_cast<size_t>(n_bytes);
    if (absl::Status s = p.Read(absl::StrCat(what, " data offset"), &t.offset); !s.ok()) return s;
    if (t.offset % alignment_ != 0) {
      return p.Error(what, absl::StrCat("data offset ", t.offset, " is not a multiple of the ",
                                        "alignment ", alignment_));
    }
    tensors_.push_back(std::move(t));
  }

  // ---- Tensor data: starts at the first aligned offset after the infos.
  uint64_t data_start = r.pos();
  if (const uint64_t rem = data_start % alignment_; rem != 0) {
    if (__builtin_add_overflow(data_start, alignment_ - rem, &data_start)) {
      return p.Error("data section", absl::StrCat("alignment ", alignment_, " is too large"));
    }
  }
  for (TensorInfo& t : tensors_) {
    uint64_t begin, end;
    if (__builtin_add_overflow(data_start, t.offset, &begin) ||
        __builtin_add_overflow(begin, static_cast<uint64_t>(t.n_bytes), &end) || end > size_) {
      return p.Error(
          absl::StrCat("tensor '", t.name, "'"),
          absl::StrCat("data [offset ", t.offset, " + data section start ", data_start, ", ",
                       t.n_bytes, " bytes] extends past end of file (size ", size_, ")"));
    }
    t.data = base_ + begin;
  }
  return absl::OkStatus();
}

const MetadataValue* GgufFile::Find(std::string_view key) const {
  for (const auto& [k, v] : metadata_) {
    if (k == key) return &v;
  }
  return nullptr;
}

namespace {

// The value as int64 / uint64 / double, or an error message.
absl::StatusOr<int64_t> AsInt(const MetadataValue& v) {
  if (const auto* u = std::get_if<uint64_t>(&v.value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat("value ", *u, " does not fit in int64"));
    }
    return static_cast<int64_t>(*u);
  }
  if (const auto* i = std::get_if<int64_t>(&v.value)) return *i;
  return absl::InvalidArgumentError(
      absl::StrCat("has type ", ValueTypeName(v.type), ", expected an integer"));
}

absl::StatusOr<uint64_t> AsUint(const MetadataValue& v) {
  if (const auto* u = std::get_if<uint64_t>(&v.value)) return *u;
  if (const auto* i = std::get_if<int64_t>(&v.value)) {
    if (*i < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("value ", *i, " is negative, expected an unsigned integer"));
    }
    return static_cast<uint64_t>(*i);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("has type ", ValueTypeName(v.type), ", expected an unsigned integer"));
}

absl::StatusOr<double> AsFloat(const MetadataValue& v) {
  if (const auto* d = std::get_if<double>(&v.value)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&v.value)) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&v.value)) return static_cast<double>(*i);
  return absl::InvalidArgumentError(
      absl::StrCat("has type ", ValueTypeName(v.type), ", expected a number"));
}

}  // namespace

namespace {

absl::StatusOr<const MetadataValue*> Lookup(const GgufFile& f, std::string_view key) {
  const MetadataValue* v = f.Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(absl::StrCat(f.path(), ": metadata key '", Sv(key), "' not found"));
  }
  return v;
}

// Prefixes a conversion error with the file and key.
absl::Status KeyError(const std::string& path, std::string_view key, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(path, ": metadata '", Sv(key), "' ", s.message()));
}

}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  absl::StatusOr<const MetadataValue*> found = Lookup(*this, key);
  if (!found.ok()) return found.status();
  const MetadataValue* v = *found;
  if (const auto* s = std::get_if<std::string>(&v->value)) return *s;
  return KeyError(path_, key,
                  absl::InvalidArgumentError(
                      absl::StrCat("has type ", ValueTypeName(v->type), ", expected string")));
}

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  absl::StatusOr<const MetadataValue*> found = Lookup(*this, key);
  if (!found.ok()) return found.status();
  const MetadataValue* v = *found;
  absl::StatusOr<uint64_t> r = AsUint(*v);
  if (!r.ok()) return KeyError(path_, key, r.status());
  return r;
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  absl::StatusOr<const MetadataValue*> found = Lookup(*this, key);
  if (!found.ok()) return found.status();
  const MetadataValue* v = *found;
  absl::StatusOr<int64_t> r = AsInt(*v);
  if (!r.ok()) return KeyError(path_, key, r.status());
  return r;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  absl::StatusOr<const MetadataValue*> found = Lookup(*this, key);
  if (!found.ok()) return found.status();
  const MetadataValue* v = *found;
  absl::StatusOr<double> r = AsFloat(*v);
  if (!r.ok()) return KeyError(path_, key, r.status());
  return r;
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  absl::StatusOr<const MetadataValue*> found = Lookup(*this, key);
  if (!found.ok()) return found.status();
  const MetadataValue* v = *found;
  if (const auto* b = std::get_if<bool>(&v->value)) return *b;
  return KeyError(path_, key,
                  absl::InvalidArgumentError(
                      absl::StrCat("has type ", ValueTypeName(v->type), ", expected bool")));
}

namespace {
absl::StatusOr<const MetadataArray*> AsArray(const MetadataValue& v) {
  if (const auto* a = std::get_if<MetadataArray>(&v.value)) return a;
  return absl::InvalidArgumentError(
      absl::StrCat("has type ", ValueTypeName(v.type), ", expected an array"));
}
}  // namespace

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  absl::StatusOr<const MetadataValue*> found = Lookup(*this, key);
  if (!found.ok()) return found.status();
  const MetadataValue* v = *found;
  absl::StatusOr<const MetadataArray*> a = AsArray(*v);
  if (!a.ok()) return KeyError(path_, key, a.status());
  std::vector<std::string> out;
  out.reserve((*a)->size());
  for (size_t i = 0; i < (*a)->size(); ++i) {
    const MetadataValue& e = (**a)[i];
    const auto* s = std::get_if<std::string>(&e.value);
    if (s == nullptr) {
      return KeyError(
          path_, key,
          absl::InvalidArgumentError(absl::StrCat("element ", i, " has type ",
                                                  ValueTypeName(e.type), ", expected string")));
    }
    out.push_back(*s);
  }
  return out;
}

namespace {

// An array value converted element by element; the error names the key and
// the first element that does not convert.
template <typename T, typename Convert>
absl::StatusOr<std::vector<T>> ConvertArray(const GgufFile& file, std::string_view key,
                                            Convert convert) {
  absl::StatusOr<const MetadataValue*> found = Lookup(file, key);
  if (!found.ok()) return found.status();
  absl::StatusOr<const MetadataArray*> a = AsArray(**found);
  if (!a.ok()) return KeyError(file.path(), key, a.status());
  std::vector<T> out;
  out.reserve((*a)->size());
  for (size_t i = 0; i < (*a)->size(); ++i) {
    absl::StatusOr<T> e = convert((**a)[i]);
    if (!e.ok()) {
      return KeyError(
          file.path(), key,
          absl::InvalidArgumentError(absl::StrCat("element ", i, " ", e.status().message())));
    }
    out.push_back(*e);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  return ConvertArray<int64_t>(*this, key, AsInt);
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(std::string_view key) const {
  return ConvertArray<double>(*this, key, AsFloat);
}

const TensorInfo* GgufFile::FindTensor(std::string_view name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<const TensorInfo*> GgufFile::GetTensor(std::string_view name,
                                                      const std::vector<int64_t>& shape) const {
  const TensorInfo* t = FindTensor(name);
  if (t == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": tensor '", Sv(name), "' not found"));
  }
  if (t->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor '", Sv(name), "' has shape ",
                                                   ShapeString(t->shape), ", expected ",
                                                   ShapeString(shape)));
  }
  return t;
}

}  // namespace kvserve::gguf
