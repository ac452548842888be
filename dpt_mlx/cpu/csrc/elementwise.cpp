// Activations and the epilogue every product ends with (bias, activation, scale, residual).
#include <algorithm>
#include <cmath>

#include "common.h"
#include "vec.h"

namespace dpt {

namespace {

DPT_INLINE vf act_v(vf x, Act act) {
  switch (act) {
    case Act::gelu:
      return x * (0.5f + 0.5f * verf(x * 0.70710678118654752f));
    case Act::relu:
      return vmax(x, splat(0.f)) + (x != x ? x : splat(0.f));  // NaN stays NaN
    case Act::gelu_tanh:
      return 0.5f * x * (1.f + vtanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    default:
      return x;
  }
}

float act_scalar(float x, Act act) {
  switch (act) {
    case Act::gelu:
      return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f));
    case Act::relu:
      return x > 0.f || x != x ? x : 0.f;
    case Act::gelu_tanh:
      return 0.5f * x * (1.f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    default:
      return x;
  }
}

// Tiles narrower than a vector (a depth head's one output channel): element by element.
void epilogue_narrow(float* y, int64_t ldy, int64_t rows, int64_t cols, const float* bias, Act act,
                     const float* scale, const float* res, int64_t ldr) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      float x = y[r * ldy + j] + (bias ? bias[j] : 0.f);
      x = act_scalar(x, act) * (scale ? scale[j] : 1.f);
      y[r * ldy + j] = x + (res ? res[r * ldr + j] : 0.f);
    }
}

DPT_CLONES void epilogue_rows(float* y, int64_t ldy, int64_t rows, int64_t cols, const float* bias, Act act,
                              const float* scale, const float* res, int64_t ldr) {
  float tail[kLanes];
  for (int64_t r = 0; r < rows; ++r) {
    float* d = y + r * ldy;
    const float* q = res ? res + r * ldr : nullptr;
    for (int64_t j = 0; j < cols; j += kLanes) {
      int64_t n = std::min<int64_t>(kLanes, cols - j);
      vf x, b = splat(0.f), s = splat(1.f), rr = splat(0.f);
      if (n == kLanes) {
        x = load(d + j);
        if (bias) b = load(bias + j);
        if (scale) s = load(scale + j);
        if (q) rr = load(q + j);
      } else {
        for (int64_t i = 0; i < n; ++i) {
          x[i] = d[j + i];
          if (bias) b[i] = bias[j + i];
          if (scale) s[i] = scale[j + i];
          if (q) rr[i] = q[j + i];
        }
      }
      x = act_v(x + b, act) * s + rr;
      if (n == kLanes) {
        store(d + j, x);
      } else {
        store(tail, x);
        std::copy(tail, tail + n, d + j);
      }
    }
  }
}

}  // namespace

void epilogue_tile(float* y, int64_t ldy, int64_t rows, int64_t cols, int64_t row0, int64_t col0,
                   const Epilogue& e) {
  if (e.empty()) return;
  auto rows_fn = cols < kLanes ? epilogue_narrow : epilogue_rows;
  rows_fn(y, ldy, rows, cols, e.bias ? e.bias + col0 : nullptr, e.act, e.scale ? e.scale + col0 : nullptr,
                e.res ? e.res + row0 * e.ldr + col0 : nullptr, e.ldr);
}

void epilogue(float* y, int64_t rows, int64_t cols, const Epilogue& e) {
  if (e.empty()) return;
  if (cols == 0) return;
  parallel_for(rows, std::max<int64_t>(1, (int64_t(1) << 14) / cols), [&](int64_t r0, int64_t r1) {
    epilogue_tile(y + r0 * cols, cols, r1 - r0, cols, r0, 0, e);
  });
}

}  // namespace dpt
