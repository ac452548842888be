// Sixteen-float vectors (GCC vector extensions: one AVX-512 register, two AVX2 or four SSE
// registers, whichever the function's target has) and the elementwise math built on them.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace dpt {

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int kLanes = 16;

// Hot loops are compiled for each of these and picked by the CPU at load time.
#if defined(__x86_64__) && !defined(DPT_NO_CLONES)
#define DPT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DPT_CLONES
#endif

#define DPT_INLINE inline __attribute__((always_inline))

DPT_INLINE vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
DPT_INLINE void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
DPT_INLINE vf splat(float x) { return vf{} + x; }
DPT_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
DPT_INLINE vf vmin(vf a, vf b) { return a < b ? a : b; }
DPT_INLINE float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}
DPT_INLINE float hmax(vf v) {
  float s = v[0];
  for (int i = 1; i < kLanes; ++i) s = v[i] > s ? v[i] : s;
  return s;
}

// exp(x), relative error below 2e-7 on [-87, 88]; 0 below -87 (a softmax's underflow).
DPT_INLINE vf vexp(vf x) {
  const vf nan = x;
  const vf lo = splat(-87.f);
  vf under = x < lo ? splat(0.f) : splat(1.f);
  x = vmin(vmax(x, lo), splat(88.f));
  const float round = 12582912.f;  // 1.5 * 2**23
  vf t = x * 1.44269504088896341f + round;
  vf n = t - round;  // round(x / ln 2)
  vf r = x - n * 0.693359375f - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  vi bits = (vi)t - (0x4B400000 - 127);
  vf two_n = (vf)(bits << 23);
  vf y = p * two_n * under;
  return nan != nan ? nan : y;  // NaN stays NaN
}

// erf(x) for float32 (rational approximation, absolute error below 4e-7).
DPT_INLINE vf verf(vf x) {
  x = vmin(vmax(x, splat(-4.f)), splat(4.f));
  vf x2 = x * x;
  vf p = splat(-2.72614225801306e-10f);
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  vf q = splat(-1.45660718464996e-05f);
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return x * p / q;
}

// tanh(x) = 1 - 2 / (exp(2x) + 1)
DPT_INLINE vf vtanh(vf x) { return 1.f - 2.f / (vexp(vmin(2.f * x, splat(88.f))) + 1.f); }

}  // namespace dpt
