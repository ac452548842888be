// The BLAS the kernels call, chosen once per process: Intel's MKL where it was linked in (x86-64
// builds; its names are local to this module), or the OpenBLAS of the scipy-openblas32 package,
// opened at run time and privately (its names are prefixed). Either way nothing reaches the
// process's global symbols, so MLX's own products keep the BLAS MLX was installed with. It runs
// single-threaded; the products are split over the pool with their epilogues.
#include <dlfcn.h>
#ifdef DPT_WITH_MKL
#include <mkl_cblas.h>
#include <mkl_service.h>
#endif

#include <algorithm>
#include <climits>
#include <mutex>
#include <stdexcept>

#include "common.h"

namespace dpt {

namespace {

// The CBLAS constants (cblas.h): row-major order and (no) transposition.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                         int);
SgemmFn g_sgemm = nullptr;
std::string g_config;
std::mutex g_mutex;

void* symbol(void* handle, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (void* p = dlsym(handle, n)) return p;
  return nullptr;
}

}  // namespace

std::string load_blas(const std::string& path) {
  std::lock_guard<std::mutex> lk(g_mutex);
  if (g_sgemm) return g_config;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) throw std::runtime_error(std::string("cannot open the BLAS: ") + dlerror());
  auto fn = reinterpret_cast<SgemmFn>(symbol(handle, {"scipy_cblas_sgemm", "cblas_sgemm"}));
  if (!fn) throw std::runtime_error("the BLAS library has no cblas_sgemm");
  if (auto set = reinterpret_cast<void (*)(int)>(
          symbol(handle, {"scipy_openblas_set_num_threads", "openblas_set_num_threads"})))
    set(1);
  auto get = reinterpret_cast<char* (*)()>(symbol(handle, {"scipy_openblas_get_config", "openblas_get_config"}));
  g_config = get && get() ? get() : "OpenBLAS";
  g_sgemm = fn;
  return g_config;
}

bool has_mkl() {
#ifdef DPT_WITH_MKL
  return true;
#else
  return false;
#endif
}

std::string use_mkl() {
  std::lock_guard<std::mutex> lk(g_mutex);
  if (g_sgemm) return g_config;
#ifdef DPT_WITH_MKL
  MKLVersion v;
  mkl_get_version(&v);
  g_config = "Intel oneMKL " + std::to_string(v.MajorVersion) + "." + std::to_string(v.UpdateVersion) +
             " (linked in, sequential)";
  g_sgemm = [](int order, int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
               int ldb, float beta, float* c, int ldc) {
    cblas_sgemm(CBLAS_LAYOUT(order), CBLAS_TRANSPOSE(ta), CBLAS_TRANSPOSE(tb), m, n, k, alpha, a, lda, b, ldb, beta,
                c, ldc);
  };
  return g_config;
#else
  throw std::runtime_error("these kernels were built without MKL");
#endif
}

std::string blas_config() { return g_config; }

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (!g_sgemm) throw std::runtime_error("no BLAS loaded (dpt_mlx.cpu.native loads one first)");
  if (std::max({m, n, k, lda, ldb, ldc}) > INT_MAX) throw std::overflow_error("sgemm: a dimension exceeds 2^31");
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  g_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, int(m), int(n), int(k), alpha, a,
          int(lda), b, int(ldb), beta, c, int(ldc));
}

void gemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
          float* c, int64_t ldc, const Epilogue& e) {
  int64_t tiles = threads();
  if (m * n * std::max<int64_t>(k, 1) < (int64_t(1) << 21)) tiles = 1;  // too small to split
  bool split_n = n * k >= m * k ? n >= 32 * tiles : m < 8 * tiles;  // the larger operand is split, not copied
  int64_t extent = split_n ? n : m, unit = split_n ? 16 : 8;
  int64_t units = (extent + unit - 1) / unit;
  tiles = std::max<int64_t>(1, std::min(tiles, units));
  parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t lo = std::min(extent, units * t / tiles * unit), hi = std::min(extent, units * (t + 1) / tiles * unit);
      if (hi <= lo) continue;
      if (split_n) {
        sgemm(false, trans_b, m, hi - lo, k, 1.f, a, lda, trans_b ? b + lo * ldb : b + lo, ldb, 0.f, c + lo, ldc);
        if (!e.empty()) epilogue_tile(c + lo, ldc, m, hi - lo, 0, lo, e);
      } else {
        sgemm(false, trans_b, hi - lo, n, k, 1.f, a + lo * lda, lda, b, ldb, 0.f, c + lo * ldc, ldc);
        if (!e.empty()) epilogue_tile(c + lo * ldc, ldc, hi - lo, n, lo, 0, e);
      }
    }
  });
}

}  // namespace dpt
