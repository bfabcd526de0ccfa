#include "engine/kernels/matmul_internal.h"

namespace kvserve::kernels::internal {
const IsaKernels* Avx2Kernels() { return nullptr; }
}  // namespace kvserve::kernels::internal
