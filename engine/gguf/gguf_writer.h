// Writes GGUF v3 files: used by tests to make tiny models and by tools.
//
// Thread-safety: not thread-safe; one writer per thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/gguf/gguf_file.h"

namespace kvserve::gguf {

class GgufWriter {
 public:
  void SetString(const std::string& key, const std::string& v);
  void SetUint32(const std::string& key, uint32_t v);
  void SetInt32(const std::string& key, int32_t v);
  void SetUint64(const std::string& key, uint64_t v);
  void SetFloat32(const std::string& key, float v);
  void SetBool(const std::string& key, bool v);
  void SetStringArray(const std::string& key, const std::vector<std::string>& v);
  void SetInt32Array(const std::string& key, const std::vector<int32_t>& v);
  void SetFloat32Array(const std::string& key, const std::vector<float>& v);
  // Any value, including nested arrays and every integer width. Setting a
  // key again replaces its value in place. An empty array is written with
  // element type uint8 (MetadataValue does not record it); array elements
  // must share one type, checked by Write().
  void Set(const std::string& key, const MetadataValue& v);

  // Adds a tensor from f32 values quantised to `type` (see QuantizeRow).
  // shape is in GGML order; values has n_elements entries, row-major.
  absl::Status AddTensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                         const std::vector<float>& values);
  // Adds a tensor from already-encoded bytes.
  void AddRawTensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type,
                    std::vector<uint8_t> bytes);

  // Writes the file (via `path`.tmp and a rename). A non-default alignment
  // (a power of two) is recorded as `general.alignment`. InvalidArgument for
  // bad tensors (duplicate name, shape, byte count) or values whose variant
  // does not match their type; Unavailable for I/O errors.
  absl::Status Write(const std::string& path, uint32_t alignment = 32) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    GgmlType type;
    std::vector<uint8_t> bytes;
  };
  std::vector<std::pair<std::string, MetadataValue>> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace kvserve::gguf
