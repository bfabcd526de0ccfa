// A GGUF model file, memory-mapped read-only.
//
// Format reference: the GGUF specification (versions 2 and 3): header
// (magic "GGUF", version, tensor count, metadata count), metadata key/value
// pairs of 13 value types (arrays nest), tensor infos (name, dims, type,
// offset), then tensor data aligned to `general.alignment` (default 32).
//
// Shapes follow GGML's convention: shape[0] is the innermost (contiguous)
// dimension. A weight matrix used as y = W x has shape {n_in, n_out}: n_out
// rows of n_in elements.
//
// Thread-safety: immutable after Open(); every const method may be called
// from any thread. Tensor data pointers stay valid while the GgufFile lives.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/gguf/ggml_type.h"

namespace kvserve::gguf {

// GGUF metadata value types, numbered as in the file.
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

struct MetadataValue;
using MetadataArray = std::vector<MetadataValue>;

// One metadata value. Integers of every width are held as int64/uint64 with
// the original type kept in `type`; arrays hold their elements.
struct MetadataValue {
  ValueType type = ValueType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string, MetadataArray> value;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // GGML order, shape[0] innermost
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;            // from the start of the data section
  const uint8_t* data = nullptr;  // into the mapping; not owned
  size_t n_bytes = 0;

  int64_t n_elements() const;  // product of shape; 0 for an empty shape
  // Rows when seen as a matrix of shape[0]-long rows.
  int64_t n_rows() const { return shape.empty() ? 0 : n_elements() / shape[0]; }
};

class GgufFile {
 public:
  // Maps and parses `path`. Errors (missing file, bad magic, unsupported
  // version, truncated header or data, unknown value or tensor type,
  // misaligned or out-of-range tensor data) name the file and the field.
  // On success every tensor has 1..4 positive dimensions, a type for which
  // IsSupportedType() holds, a row length that is a whole number of blocks,
  // and data that lies inside the file; keys and tensor names are unique.
  // Malformed input of any kind yields an error, never a crash.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string, MetadataValue>>& metadata() const { return metadata_; }
  const MetadataValue* Find(std::string_view key) const;
  bool Has(std::string_view key) const { return Find(key) != nullptr; }

  // Typed getters. NotFound when absent, InvalidArgument (naming the key and
  // the actual type) when the type does not fit. Integer getters accept any
  // integer type whose value fits; GetFloat accepts float32/64 and integers.
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* FindTensor(std::string_view name) const;

  // Looks up a tensor and checks its shape (GGML order); the error names the
  // file, the tensor and both shapes.
  absl::StatusOr<const TensorInfo*> GetTensor(std::string_view name,
                                              const std::vector<int64_t>& shape) const;

 private:
  GgufFile() = default;
  absl::Status Parse();

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;  // the mapping; owned, unmapped in the destructor
  size_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, MetadataValue>> metadata_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace kvserve::gguf
