#include "tiles.h"

#include <algorithm>
#include <array>
#include <utility>

#include "common.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace dpt {

namespace {

constexpr int kRows = 8, kCols = 32;  // the register tile: 8 rows x 2 vectors = 16 accumulators

#if defined(__x86_64__)
#define DPT_AVX512 __attribute__((target("avx512f")))

template <int R>
DPT_AVX512 inline void score_tile(float* s, int64_t lds, const float* q, int64_t ldq, const float* panel, int64_t d,
                                  int64_t cols, float scale) {
  __m512 a0[R], a1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t c = 0; c < d; ++c) {
    __m512 b0 = _mm512_loadu_ps(panel + c * kCols), b1 = _mm512_loadu_ps(panel + c * kCols + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m512 x = _mm512_set1_ps(q[r * ldq + c]);
      a0[r] = _mm512_fmadd_ps(x, b0, a0[r]);
      a1[r] = _mm512_fmadd_ps(x, b1, a1[r]);
    }
  }
  const __m512 k = _mm512_set1_ps(scale);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* row = s + r * lds;
    if (cols == kCols) {
      _mm512_storeu_ps(row, _mm512_mul_ps(a0[r], k));
      _mm512_storeu_ps(row + 16, _mm512_mul_ps(a1[r], k));
    } else {
      alignas(64) float tmp[kCols];
      _mm512_store_ps(tmp, _mm512_mul_ps(a0[r], k));
      _mm512_store_ps(tmp + 16, _mm512_mul_ps(a1[r], k));
      std::copy(tmp, tmp + cols, row);
    }
  }
}

template <int R>
DPT_AVX512 inline void value_tile(float* o, const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t n,
                                  int64_t d, bool accumulate) {
  __m512 a0[R], a1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    a0[r] = accumulate ? _mm512_loadu_ps(o + r * d) : _mm512_setzero_ps();
    a1[r] = accumulate ? _mm512_loadu_ps(o + r * d + 16) : _mm512_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t j = 0; j < n; ++j) {
    __m512 b0 = _mm512_loadu_ps(v + j * ldv), b1 = _mm512_loadu_ps(v + j * ldv + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m512 x = _mm512_set1_ps(p[r * ldp + j]);
      a0[r] = _mm512_fmadd_ps(x, b0, a0[r]);
      a1[r] = _mm512_fmadd_ps(x, b1, a1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(o + r * d, a0[r]);
    _mm512_storeu_ps(o + r * d + 16, a1[r]);
  }
}

template <int R>
DPT_AVX512 void score_rows(float* s, const float* q, int64_t ldq, const float* packed, int64_t n, int64_t d,
                           float scale) {
  for (int64_t c0 = 0; c0 < n; c0 += kCols)
    score_tile<R>(s + c0, n, q, ldq, packed + c0 * d, d, std::min<int64_t>(kCols, n - c0), scale);
}

template <int R>
DPT_AVX512 void value_rows(float* o, const float* p, int64_t n, const float* v, int64_t ldv, int64_t d,
                           bool accumulate) {
  for (int64_t c0 = 0; c0 < d; c0 += kCols) value_tile<R>(o + c0, p, n, v + c0, ldv, n, d, accumulate);
}

using ScoreRows = void (*)(float*, const float*, int64_t, const float*, int64_t, int64_t, float);
using ValueRows = void (*)(float*, const float*, int64_t, const float*, int64_t, int64_t, bool);

template <int... R>
constexpr auto score_table(std::integer_sequence<int, R...>) {
  return std::array<ScoreRows, sizeof...(R)>{score_rows<R + 1>...};
}
template <int... R>
constexpr auto value_table(std::integer_sequence<int, R...>) {
  return std::array<ValueRows, sizeof...(R)>{value_rows<R + 1>...};
}

#endif  // __x86_64__

}  // namespace

bool tiles_apply(int64_t d) {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && d % kCols == 0 && d <= 256;
#else
  return false;
#endif
}

void score_tiles(float* s, const float* q, int64_t ldq, const float* k, int64_t ldk, int64_t rows, int64_t n,
                 int64_t d, float scale, const TileKey& key) {
#if defined(__x86_64__)
  // Keys packed in panels of 32: panel[c][j] = k[p * 32 + j][c], zero past the last key; a thread
  // that takes the next query block of the same head (the same key) reuses its packing.
  thread_local TileKey packed_key;
  int64_t panels = (n + kCols - 1) / kCols;
  float* packed = scratch(6, size_t(panels * kCols * d));
  if (!(key == packed_key) || key.call == 0) {
    for (int64_t pnl = 0; pnl < panels; ++pnl) {
      float* dst = packed + pnl * kCols * d;
      int64_t keys = std::min<int64_t>(kCols, n - pnl * kCols);
      const float* src = k + pnl * kCols * ldk;
      for (int64_t c = 0; c < d; ++c) {
        for (int64_t j = 0; j < keys; ++j) dst[c * kCols + j] = src[j * ldk + c];
        for (int64_t j = keys; j < kCols; ++j) dst[c * kCols + j] = 0.f;
      }
    }
    packed_key = key;
  }
  static const auto table = score_table(std::make_integer_sequence<int, kRows>{});
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    int64_t r = std::min<int64_t>(kRows, rows - r0);
    table[r - 1](s + r0 * n, q + r0 * ldq, ldq, packed, n, d, scale);
  }
#endif
}

void value_tiles(float* o, const float* p, const float* v, int64_t ldv, int64_t rows, int64_t n, int64_t d,
                 bool accumulate, const TileKey& key) {
#if defined(__x86_64__)
  // Values copied to contiguous rows (a head's rows are H * D apart in the models' layout, often a
  // multiple of 4 KiB: they would all fall into the same cache sets), once per key as above.
  thread_local TileKey packed_key;
  float* packed = scratch(7, size_t(n * d));
  if (!(key == packed_key) || key.call == 0) {
    for (int64_t j = 0; j < n; ++j) std::copy(v + j * ldv, v + j * ldv + d, packed + j * d);
    packed_key = key;
  }
  static const auto table = value_table(std::make_integer_sequence<int, kRows>{});
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    int64_t r = std::min<int64_t>(kRows, rows - r0);
    table[r - 1](o + r0 * d, p + r0 * n, n, packed, d, d, accumulate);
  }
#endif
}

}  // namespace dpt
