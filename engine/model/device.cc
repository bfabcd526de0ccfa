#include "engine/model/device.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/cuda/cuda_module_abi.h"

namespace kvserve::model {
namespace {

std::string ExecutableDir() {
  std::vector<char> buf(4096);
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  std::string path(buf.data(), static_cast<size_t>(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

// Where libkvserve_cuda.so may be, in order.
std::vector<std::string> ModuleCandidates() {
  std::vector<std::string> c;
  if (const char* env = std::getenv("KVSERVE_CUDA_MODULE"); env != nullptr && *env != '\0') {
    c.push_back(env);
    return c;  // an explicit choice is the only one tried
  }
  const std::string dir = ExecutableDir();
  if (!dir.empty()) {
    c.push_back(dir + "/libkvserve_cuda.so");                 // the build tree, or beside it
    c.push_back(dir + "/../lib/kvserve/libkvserve_cuda.so");  // an install
  }
#ifdef KVSERVE_CUDA_MODULE_BUILD_PATH
  c.push_back(KVSERVE_CUDA_MODULE_BUILD_PATH);  // tests run from elsewhere in the build tree
#endif
  return c;
}

struct CudaModule {
  cuda::MakeFn make = nullptr;
  cuda::DeviceCountFn device_count = nullptr;
  std::string path;
};

// Opens the first candidate that exists. A module is opened once per path
// and never unloaded (backends from it may live until exit); failures are
// not remembered, so a fixed installation is found on the next try.
absl::StatusOr<CudaModule> LoadCudaModule() {
  static std::mutex mu;
  static auto* opened = new std::map<std::string, CudaModule>();
  std::lock_guard<std::mutex> lock(mu);
  std::vector<std::string> tried;
  for (const std::string& path : ModuleCandidates()) {
    if (auto it = opened->find(path); it != opened->end()) return it->second;
    if (access(path.c_str(), F_OK) != 0) {
      tried.push_back(absl::StrCat(path, " (absent)"));
      continue;
    }
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      // Present but not loadable: most often the CUDA runtime libraries are
      // missing. Say so rather than trying further candidates.
      return absl::FailedPreconditionError(
          absl::StrCat("device cuda: cannot load ", path, ": ", dlerror()));
    }
    auto abi = reinterpret_cast<cuda::AbiFn>(dlsym(h, cuda::kAbiSymbol));
    CudaModule m;
    m.make = reinterpret_cast<cuda::MakeFn>(dlsym(h, cuda::kMakeSymbol));
    m.device_count = reinterpret_cast<cuda::DeviceCountFn>(dlsym(h, cuda::kDeviceCountSymbol));
    m.path = path;
    if (abi == nullptr || m.make == nullptr || m.device_count == nullptr ||
        abi() != cuda::kCudaModuleAbi) {
      const int got = abi != nullptr ? abi() : -1;
      dlclose(h);
      return absl::FailedPreconditionError(
          absl::StrCat("device cuda: ", path, " is not a CUDA module of this kvserve build (ABI ",
                       got, ", expected ", cuda::kCudaModuleAbi, ")"));
    }
    opened->emplace(path, m);
    return m;
  }
  return absl::UnimplementedError(absl::StrCat(
      "device cuda: this kvserve has no CUDA backend (no libkvserve_cuda.so; looked for ",
      absl::StrJoin(tried, ", "),
      "); build with the CUDA toolkit installed (-DKVSERVE_CUDA=ON) or set KVSERVE_CUDA_MODULE"));
}

}  // namespace

absl::StatusOr<DeviceSpec> ParseDevice(std::string_view name) {
  DeviceSpec d;
  if (name == "cpu") return d;
  d.kind = DeviceSpec::Kind::kCuda;
  if (name == "cuda") return d;
  // This Abseil's string_view is not std::string_view.
  const std::string text(name);
  int ordinal = -1;
  if (absl::StartsWith(text, "cuda:") && absl::SimpleAtoi(text.substr(5), &ordinal) &&
      ordinal >= 0 && ordinal < 1024) {
    d.ordinal = ordinal;
    return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device: expected cpu, cuda or cuda:N, got '", text, "'"));
}

absl::StatusOr<std::string> CudaModulePath() {
  auto m = LoadCudaModule();
  if (!m.ok()) return m.status();
  return m->path;
}

int CudaDeviceCount() {
  auto m = LoadCudaModule();
  return m.ok() ? m->device_count() : 0;
}

absl::StatusOr<std::unique_ptr<kernels::MatMulBackend>> MakeMatMulBackend(std::string_view name,
                                                                          ThreadPool* pool) {
  auto spec = ParseDevice(name);
  if (!spec.ok()) return spec.status();
  if (spec->kind == DeviceSpec::Kind::kCpu) return kernels::MakeCpuMatMulBackend(pool);
  auto m = LoadCudaModule();
  if (!m.ok()) return m.status();
  int code = static_cast<int>(absl::StatusCode::kUnknown);
  char err[512] = {0};
  kernels::MatMulBackend* b = m->make(spec->ordinal, &code, err, sizeof err);
  if (b == nullptr) return absl::Status(static_cast<absl::StatusCode>(code), err);
  return std::unique_ptr<kernels::MatMulBackend>(b);
}

}  // namespace kvserve::model
