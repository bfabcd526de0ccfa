#include "engine/kernels/matmul_backend.h"

#include "absl/strings/str_cat.h"

namespace kvserve::kernels {
namespace {

class CpuMatMulBackend : public MatMulBackend {
 public:
  explicit CpuMatMulBackend(ThreadPool* pool) : pool_(pool) {}

  const char* device() const override { return "cpu"; }
  std::string Describe() const override {
    return absl::StrCat("cpu (", MatMulIsa(), ", ", pool_ != nullptr ? pool_->size() : 1,
                        " threads)");
  }
  absl::Status Prepare(const WeightView& w) override {
    if (!MatMulSupports(w.type)) {
      return absl::InvalidArgumentError(absl::StrCat("the CPU matmul cannot read weight type ",
                                                     std::string(gguf::TypeName(w.type))));
    }
    return absl::OkStatus();
  }
  absl::Status MatMul(const WeightView& w, const float* x, int64_t m, float* y) override {
    kernels::MatMul(w, x, m, y, pool_, &scratch_);
    return absl::OkStatus();
  }
  uint64_t device_bytes() const override { return 0; }

 private:
  ThreadPool* pool_;  // not owned
  MatMulScratch scratch_;
};

}  // namespace

std::unique_ptr<MatMulBackend> MakeCpuMatMulBackend(ThreadPool* pool) {
  return std::make_unique<CpuMatMulBackend>(pool);
}

}  // namespace kvserve::kernels
