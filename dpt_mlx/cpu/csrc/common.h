// Shared pieces of the CPU kernels: the thread pool, the BLAS, vector helpers and a base for
// the primitives (whose gradients come from a plain-MLX reference of the same computation).
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace dpt {

namespace mx = mlx::core;

// ------------------------------------------------------------------------------ thread pool

// Threads of the pool (the calling thread counts as one). The BLAS gets the same number.
void set_threads(int n);
int threads();

// Runs f(begin, end) over [0, n) in chunks of at least `grain` items on every thread of the pool
// and returns when all are done; the first exception thrown by a chunk is rethrown here. Inside a
// chunk the BLAS runs on one thread. Nested calls run inline.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f);

// Scratch memory of the calling thread, at least `count` floats, reused between calls.
float* scratch(int slot, size_t count);

// ------------------------------------------------------------------------------ elementwise

enum class Act : int { none = 0, gelu = 1, relu = 2, gelu_tanh = 3 };

// What follows a product, per output element (row i, column j):
// y = act(y + bias[j]) * scale[j] + res[i * ldr + j]; every pointer may be null.
struct Epilogue {
  const float* bias = nullptr;
  Act act = Act::none;
  const float* scale = nullptr;
  const float* res = nullptr;
  int64_t ldr = 0;
  bool empty() const { return !bias && act == Act::none && !scale && !res; }
};

// The epilogue on rows x cols of y (row stride ldy) whose first element is (row0, col0) of the
// epilogue's operands, on the calling thread.
void epilogue_tile(float* y, int64_t ldy, int64_t rows, int64_t cols, int64_t row0, int64_t col0, const Epilogue& e);
// The epilogue on a whole row-contiguous (rows x cols) array, on every thread.
void epilogue(float* y, int64_t rows, int64_t cols, const Epilogue& e);

// ------------------------------------------------------------------------------ BLAS

// C = alpha * op(A) @ op(B) + beta * C, row-major, on the calling thread (the BLAS is single-
// threaded: every kernel parallelises through the pool).
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
// C = A @ op(B) followed by the epilogue, split into one tile per thread of the pool (along
// whichever of M and N keeps the packed operands smaller), each tile's epilogue right after its
// product while it is in cache.
void gemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
          float* c, int64_t ldc, const Epilogue& e = {});
// Open the OpenBLAS at `path` once per process; returns its description.
std::string load_blas(const std::string& path);
// Whether Intel's MKL was linked in, and call it instead (once per process); its description.
bool has_mkl();
std::string use_mkl();
// The BLAS in use, as it describes itself ('' before one is chosen).
std::string blas_config();

// ------------------------------------------------------------------------------ primitives

// `a` as float32 in row-major order without gaps (MLX copies it only when it is not already).
mx::array dense(const mx::array& a, mx::Stream s);

// A primitive whose CPU evaluation is a kernel here and whose every other transform goes through
// `reference`, the same computation in plain MLX ops.
class Kernel : public mx::Primitive {
 public:
  explicit Kernel(mx::Stream s) : mx::Primitive(s) {}
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override;
  // The same computation in MLX ops (on this primitive's stream).
  virtual std::vector<mx::array> reference(const std::vector<mx::array>& inputs) = 0;

 protected:
  // Allocate `out` (row-contiguous, unless the kernel has set its data already) and register the
  // arrays with the stream's encoder, which then takes the kernel's work (`dispatch`).
  mx::cpu::CommandEncoder& begin(const std::vector<mx::array>& inputs, mx::array& out);
};

}  // namespace dpt
