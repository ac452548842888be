#include "tiles.h"

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "common.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace dpt {

namespace {

constexpr int kRows = 8, kCols = 32;  // the register tile: 8 rows x 2 vectors = 16 accumulators
constexpr int kConvRows = 12;  // a convolution's tile: 12 pixels x 2 vectors = 24 accumulators

#if defined(__x86_64__)
#define DPT_AVX512 __attribute__((target("avx512f")))

template <int R>
DPT_AVX512 inline void score_tile(float* s, int64_t lds, const float* q, int64_t ldq, const float* panel, int64_t d,
                                  int64_t cols, float scale, __m512* rmax) {
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
  // the keys past the last (cols < 32) are zero columns: kept out of the rows' maxima
  const __mmask16 m0 = cols >= 16 ? 0xFFFF : __mmask16((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : __mmask16((1u << (cols - 16)) - 1);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* row = s + r * lds;
    __m512 x0 = _mm512_mul_ps(a0[r], k), x1 = _mm512_mul_ps(a1[r], k);
    rmax[r] = _mm512_mask_max_ps(_mm512_mask_max_ps(rmax[r], m0, rmax[r], x0), m1, rmax[r], x1);
    if (cols == kCols) {
      _mm512_storeu_ps(row, x0);
      _mm512_storeu_ps(row + 16, x1);
    } else {
      alignas(64) float tmp[kCols];
      _mm512_store_ps(tmp, x0);
      _mm512_store_ps(tmp + 16, x1);
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
                           float scale, float* rowmax) {
  __m512 rmax[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) rmax[r] = _mm512_set1_ps(-__builtin_inff());
  for (int64_t c0 = 0; c0 < n; c0 += kCols)
    score_tile<R>(s + c0, n, q, ldq, packed + c0 * d, d, std::min<int64_t>(kCols, n - c0), scale, rmax);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) rowmax[r] = _mm512_reduce_max_ps(rmax[r]);
}

template <int R>
DPT_AVX512 void value_rows(float* o, const float* p, int64_t n, const float* v, int64_t ldv, int64_t d,
                           bool accumulate) {
  for (int64_t c0 = 0; c0 < d; c0 += kCols) value_tile<R>(o + c0, p, n, v + c0, ldv, n, d, accumulate);
}

using ScoreRows = void (*)(float*, const float*, int64_t, const float*, int64_t, int64_t, float, float*);
using ValueRows = void (*)(float*, const float*, int64_t, const float*, int64_t, int64_t, bool);

template <int... R>
constexpr auto score_table(std::integer_sequence<int, R...>) {
  return std::array<ScoreRows, sizeof...(R)>{score_rows<R + 1>...};
}
template <int... R>
constexpr auto value_table(std::integer_sequence<int, R...>) {
  return std::array<ValueRows, sizeof...(R)>{value_rows<R + 1>...};
}

// One output tile of a convolution: R pixels (their input taps at src[r][t], a zero row where a
// tap falls in the padding) times 32 output channels of the packed weights.
template <int R>
DPT_AVX512 void conv_tile(float* y, int64_t ldy, const float* const* src, int64_t taps, const float* panel,
                          int64_t channels, int64_t cols) {
  __m512 a0[R], a1[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t t = 0; t < taps; ++t) {
    const float* wt = panel + t * channels * kCols;
    const float* p[R];
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) p[r] = src[r * taps + t];
#pragma GCC unroll 2
    for (int64_t c = 0; c < channels; ++c) {
      __m512 b0 = _mm512_loadu_ps(wt + c * kCols), b1 = _mm512_loadu_ps(wt + c * kCols + 16);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        __m512 x = _mm512_set1_ps(p[r][c]);
        a0[r] = _mm512_fmadd_ps(x, b0, a0[r]);
        a1[r] = _mm512_fmadd_ps(x, b1, a1[r]);
      }
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    if (cols == kCols) {
      _mm512_storeu_ps(y + r * ldy, a0[r]);
      _mm512_storeu_ps(y + r * ldy + 16, a1[r]);
    } else {
      alignas(64) float tmp[kCols];
      _mm512_store_ps(tmp, a0[r]);
      _mm512_store_ps(tmp + 16, a1[r]);
      std::copy(tmp, tmp + cols, y + r * ldy);
    }
  }
}

using ConvTile = void (*)(float*, int64_t, const float* const*, int64_t, const float*, int64_t, int64_t);

template <int... R>
constexpr auto conv_table(std::integer_sequence<int, R...>) {
  return std::array<ConvTile, sizeof...(R)>{conv_tile<R + 1>...};
}

#endif  // __x86_64__

}  // namespace

// Up to 128 channels under a 3x3 kernel: measured faster than im2col and the BLAS; above, the
// BLAS's blocking wins (220-230 against 190-220 GFLOP/s at 256 channels on a 2-core Xeon).
bool conv_tiles_apply(const ConvShape& g) {
  return tiles_apply(kCols) && g.i >= 16 && g.o >= 8 && g.i * g.kh * g.kw <= 1152;
}

void conv_tiles(float* y, const float* x, const float* w, const ConvShape& g, const Epilogue& e) {
#if defined(__x86_64__)
  int64_t taps = g.kh * g.kw, panels = (g.o + kCols - 1) / kCols;
  // Weights packed per 32 output channels: panel[t][c][j] = w[p * 32 + j][t][c], zero past the last.
  std::vector<float> packed(size_t(panels * taps * g.i * kCols));
  parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t c = 0; c < g.i; ++c) {
          float* dst = packed.data() + ((p * taps + t) * g.i + c) * kCols;
          for (int64_t j = 0; j < kCols; ++j) {
            int64_t o = p * kCols + j;
            dst[j] = o < g.o ? w[(o * taps + t) * g.i + c] : 0.f;
          }
        }
  });
  std::vector<float> zeros(size_t(g.i), 0.f);
  static const auto table = conv_table(std::make_integer_sequence<int, kConvRows>{});
  int64_t groups = (g.ow + kConvRows - 1) / kConvRows;
  parallel_for(g.b * g.oh * groups, 1, [&](int64_t t0, int64_t t1) {
    std::vector<const float*> src(size_t(kConvRows * taps));
    for (int64_t task = t0; task < t1; ++task) {
      int64_t grp = task % groups, row = task / groups, oy = row % g.oh, b = row / g.oh;
      int64_t ox0 = grp * kConvRows, rows = std::min<int64_t>(kConvRows, g.ow - ox0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t ky = 0; ky < g.kh; ++ky)
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            int64_t iy = oy * g.sh - g.ph + ky * g.dh, ix = (ox0 + r) * g.sw - g.pw + kx * g.dw;
            bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
            src[r * taps + ky * g.kw + kx] = inside ? x + ((b * g.h + iy) * g.w + ix) * g.i : zeros.data();
          }
      int64_t pixel = (b * g.oh + oy) * g.ow + ox0;
      for (int64_t p = 0; p < panels; ++p) {
        int64_t cols = std::min<int64_t>(kCols, g.o - p * kCols);
        float* out = y + pixel * g.o + p * kCols;
        table[rows - 1](out, g.o, src.data(), taps, packed.data() + p * taps * g.i * kCols, g.i, cols);
        epilogue_tile(out, g.o, rows, cols, pixel, p * kCols, e);
      }
    }
  });
#endif
}

bool tiles_apply(int64_t d) {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && d % kCols == 0 && d <= 256;
#else
  return false;
#endif
}

void score_tiles(float* s, const float* q, int64_t ldq, const float* k, int64_t ldk, int64_t rows, int64_t n,
                 int64_t d, float scale, const TileKey& key, float* rowmax) {
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
    table[r - 1](s + r0 * n, q + r0 * ldq, ldq, packed, n, d, scale, rowmax + r0);
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
