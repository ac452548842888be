// Convolutions of the necks and heads: im2col in cache-sized chunks of output pixels (with the
// input ReLU applied on the way), one BLAS product per chunk, and the epilogue (bias, ReLU,
// residual). Transposed convolutions whose stride equals the kernel are one product and a scatter.
#include <vector>

#include "mlx/backend/cpu/encoder.h"

#include "kernels.h"
#include "tiles.h"
#include "vec.h"

namespace dpt {

namespace {

constexpr int64_t kChunkFloats = int64_t(4) << 20;  // 16 MiB of im2col rows per product (large weights)
constexpr int64_t kSmallWeights = int64_t(1) << 19;  // weights up to 2 MiB: each thread's chunks stay in L2
constexpr int64_t kThreadChunkFloats = int64_t(1) << 18;  // 1 MiB of im2col rows per chunk then

using Geometry = ConvShape;

DPT_CLONES void copy_row(float* dst, const float* src, int64_t n, bool relu) {
  if (!relu) {
    std::memcpy(dst, src, size_t(n) * sizeof(float));
    return;
  }
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    vf x = load(src + j);
    store(dst + j, vmax(x, splat(0.f)) + (x != x ? x : splat(0.f)));
  }
  for (; j < n; ++j) dst[j] = src[j] > 0.f || src[j] != src[j] ? src[j] : 0.f;
}

// y (rows x n) = x (rows x k) @ w^T (w: n x k) for a handful of outputs (n <= 4), where a BLAS
// product degenerates to matrix-vector calls.
DPT_CLONES void narrow_rows(float* y, const float* x, const float* w, int64_t rows, int64_t k, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * k;
    for (int64_t o = 0; o < n; ++o) {
      const float* wo = w + o * k;
      vf acc = splat(0.f);
      int64_t j = 0;
      for (; j + kLanes <= k; j += kLanes) acc += load(xr + j) * load(wo + j);
      float sum = hsum(acc);
      for (; j < k; ++j) sum += xr[j] * wo[j];
      y[r * n + o] = sum;
    }
  }
}

// Rows [p0, p1) of the im2col matrix (one row per output pixel, kh * kw * i columns).
void im2col(float* col, const float* x, const Geometry& g, int64_t p0, int64_t p1, bool relu) {
  int64_t kcols = g.kh * g.kw * g.i;
  for (int64_t p = p0; p < p1; ++p) {
    int64_t ox = p % g.ow, oy = (p / g.ow) % g.oh, b = p / (g.ow * g.oh);
    float* row = col + (p - p0) * kcols;
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      int64_t iy = oy * g.sh - g.ph + ky * g.dh;
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        float* dst = row + (ky * g.kw + kx) * g.i;
        int64_t ix = ox * g.sw - g.pw + kx * g.dw;
        if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w)
          std::memset(dst, 0, size_t(g.i) * sizeof(float));
        else
          copy_row(dst, x + ((b * g.h + iy) * g.w + ix) * g.i, g.i, relu);
      }
    }
  }
}

class Conv2d : public Kernel {
 public:
  Conv2d(mx::Stream s, Geometry g, bool bias, bool pre_relu, Act post, bool residual)
      : Kernel(s), g_(g), bias_(bias), pre_relu_(pre_relu), post_(post), residual_(residual) {}
  const char* name() const override { return "DptConv2d"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Conv2d&>(other);
    return std::memcmp(&g_, &o.g_, sizeof(g_)) == 0 && bias_ == o.bias_ && pre_relu_ == o.pre_relu_ &&
           post_ == o.post_ && residual_ == o.residual_;
  }

  std::vector<mx::array> reference(const std::vector<mx::array>& in) override {
    auto s = stream();
    auto x = pre_relu_ ? mx::maximum(in[0], mx::array(0.f), s) : in[0];
    auto y = mx::conv_general(x, in[1], {int(g_.sh), int(g_.sw)}, {int(g_.ph), int(g_.pw)},
                              {int(g_.ph), int(g_.pw)}, {int(g_.dh), int(g_.dw)}, {1, 1}, 1, false, s);
    size_t i = 2;
    if (bias_) y = mx::add(y, in[i++], s);
    y = act_reference(y, post_, s);
    if (residual_) y = mx::add(y, in[i++], s);
    return {y};
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& in = inputs;
    auto& out = outputs[0];
    auto& enc = begin(in, out);
    size_t i = 2;
    const float* x = in[0].data<float>();
    const float* w = in[1].data<float>();
    const float* bias = bias_ ? in[i++].data<float>() : nullptr;
    const float* res = residual_ ? in[i++].data<float>() : nullptr;
    float* y = out.data<float>();
    Geometry g = g_;
    bool pre = pre_relu_;
    Epilogue e{bias, post_, nullptr, res, g.o};
    enc.dispatch([=]() {
      int64_t pixels = g.b * g.oh * g.ow, kcols = g.kh * g.kw * g.i;
      bool direct = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && !pre;
      if (direct && g.o <= 4) {
        parallel_for(pixels, 256, [&](int64_t a, int64_t b) {
          narrow_rows(y + a * g.o, x + a * kcols, w, b - a, kcols, g.o);
          epilogue_tile(y + a * g.o, g.o, b - a, g.o, a, 0, e);
        });
        return;
      }
      if (direct) {
        gemm(true, pixels, g.o, kcols, x, kcols, w, kcols, y, g.o, e);
        return;
      }
      if (conv_tiles_apply(g)) {
        const float* src = x;
        std::vector<float> relu_x;
        if (pre) {  // the input's ReLU once, not at every tap
          relu_x.resize(size_t(g.b * g.h * g.w * g.i));
          parallel_for(int64_t(relu_x.size()), 1 << 14, [&](int64_t a, int64_t b) {
            copy_row(relu_x.data() + a, x + a, b - a, true);
          });
          src = relu_x.data();
        }
        conv_tiles(y, src, w, g, e);
        return;
      }
      if (kcols * g.o <= kSmallWeights) {  // each thread: im2col rows, product and epilogue in its L2
        int64_t rows = std::max<int64_t>(32, kThreadChunkFloats / kcols);
        parallel_for((pixels + rows - 1) / rows, 1, [&](int64_t c0, int64_t c1) {
          float* col = scratch(5, size_t(rows * kcols));
          for (int64_t c = c0; c < c1; ++c) {
            int64_t p0 = c * rows, p1 = std::min(pixels, p0 + rows);
            im2col(col, x, g, p0, p1, pre);
            sgemm(false, true, p1 - p0, g.o, kcols, 1.f, col, kcols, w, kcols, 0.f, y + p0 * g.o, g.o);
            epilogue_tile(y + p0 * g.o, g.o, p1 - p0, g.o, p0, 0, e);
          }
        });
        return;
      }
      int64_t chunk = std::max<int64_t>(64, kChunkFloats / std::max<int64_t>(kcols, 1));
      float* col = scratch(0, size_t(std::min(chunk, pixels) * kcols));
      for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
        int64_t p1 = std::min(pixels, p0 + chunk);
        parallel_for(p1 - p0, 16, [&](int64_t a, int64_t b) { im2col(col + a * kcols, x, g, p0 + a, p0 + b, pre); });
        Epilogue ec = e;
        if (res) ec.res = res + p0 * g.o;
        gemm(true, p1 - p0, g.o, kcols, col, kcols, w, kcols, y + p0 * g.o, g.o, ec);
      }
    });
  }

 private:
  Geometry g_;
  bool bias_, pre_relu_;
  Act post_;
  bool residual_;
};

class ConvTransposePatch : public Kernel {
 public:
  ConvTransposePatch(mx::Stream s, bool bias) : Kernel(s), bias_(bias) {}
  const char* name() const override { return "DptConvTransposePatch"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return bias_ == static_cast<const ConvTransposePatch&>(other).bias_;
  }

  std::vector<mx::array> reference(const std::vector<mx::array>& in) override {
    auto s = stream();
    int k = in[1].shape(1);
    auto y = mx::conv_transpose2d(in[0], in[1], {k, k}, {0, 0}, {1, 1}, {0, 0}, 1, s);
    if (bias_) y = mx::add(y, in[2], s);
    return {y};
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& in = inputs;
    auto& out = outputs[0];
    auto& enc = begin(in, out);
    int64_t b = in[0].shape(0), h = in[0].shape(1), w = in[0].shape(2), ci = in[0].shape(3);
    int64_t co = in[1].shape(0), k = in[1].shape(1);
    const float* x = in[0].data<float>();
    const float* wt = in[1].data<float>();
    const float* bias = bias_ ? in[2].data<float>() : nullptr;
    float* y = out.data<float>();
    enc.dispatch([=]() {
      int64_t cols = k * k * co, pixels = b * h * w;
      float* wr = scratch(1, size_t(cols * ci));  // (k, k, O, I): row (dy * k + dx) * O + o
      parallel_for(co, 1, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t t = 0; t < k * k; ++t)
            std::memcpy(wr + (t * co + o) * ci, wt + (o * k * k + t) * ci, size_t(ci) * sizeof(float));
      });
      int64_t chunk = std::max<int64_t>(16, kChunkFloats / cols);
      float* c = scratch(0, size_t(std::min(chunk, pixels) * cols));
      for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
        int64_t p1 = std::min(pixels, p0 + chunk);
        gemm(true, p1 - p0, cols, ci, x + p0 * ci, ci, wr, ci, c, cols);
        parallel_for(p1 - p0, 8, [&](int64_t a, int64_t e) {
          for (int64_t p = p0 + a; p < p0 + e; ++p) {
            int64_t px = p % w, py = (p / w) % h, pb = p / (w * h);
            for (int64_t dy = 0; dy < k; ++dy) {
              float* dst = y + ((pb * h * k + py * k + dy) * w * k + px * k) * co;
              epilogue_row(dst, c + (p - p0) * cols + dy * k * co, k, co, bias);
            }
          }
        });
      }
    });
  }

 private:
  static void epilogue_row(float* dst, const float* src, int64_t k, int64_t co, const float* bias) {
    for (int64_t j = 0; j < k; ++j)
      for (int64_t o = 0; o < co; ++o) dst[j * co + o] = src[j * co + o] + (bias ? bias[o] : 0.f);
  }
  bool bias_;
};

}  // namespace

mx::array conv2d(const mx::array& x, const mx::array& w, const OptArray& bias, std::pair<int, int> stride,
                 std::pair<int, int> padding, std::pair<int, int> dilation, bool pre_relu, Act post,
                 const OptArray& residual, mx::StreamOrDevice sd) {
  auto s = mx::to_stream(sd);
  if (x.ndim() != 4 || w.ndim() != 4 || x.shape(3) != w.shape(3))
    throw std::invalid_argument("conv2d: x (B, H, W, I) and w (O, kh, kw, I) do not match");
  Geometry g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(1), w.shape(2), 0, 0,
             stride.first, stride.second, padding.first, padding.second, dilation.first, dilation.second};
  if (g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.ph < 0 || g.pw < 0)
    throw std::invalid_argument("conv2d: bad stride, padding or dilation");
  g.oh = (g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.ow = (g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  if (g.oh < 1 || g.ow < 1) throw std::invalid_argument("conv2d: the kernel is larger than the padded input");
  auto f32 = mx::float32;
  mx::Shape shape{int(g.b), int(g.oh), int(g.ow), int(g.o)};
  std::vector<mx::array> in{dense(x, s), dense(w, s)};
  if (bias) in.push_back(dense(mx::reshape(*bias, {int(g.o)}, s), s));
  if (residual) in.push_back(dense(mx::broadcast_to(*residual, shape, s), s));
  auto out = mx::array(shape, f32, std::make_shared<Conv2d>(s, g, bool(bias), pre_relu, post, bool(residual)), in);
  return x.dtype() == f32 ? out : mx::astype(out, x.dtype(), s);
}

mx::array conv_transpose_patch(const mx::array& x, const mx::array& w, const OptArray& bias, mx::StreamOrDevice sd) {
  auto s = mx::to_stream(sd);
  if (x.ndim() != 4 || w.ndim() != 4 || x.shape(3) != w.shape(3) || w.shape(1) != w.shape(2))
    throw std::invalid_argument("conv_transpose_patch: x (B, H, W, I) and w (O, k, k, I) do not match");
  int k = w.shape(1), o = w.shape(0);
  auto f32 = mx::float32;
  std::vector<mx::array> in{dense(x, s), dense(w, s)};
  if (bias) in.push_back(dense(mx::reshape(*bias, {o}, s), s));
  mx::Shape shape{x.shape(0), x.shape(1) * k, x.shape(2) * k, o};
  auto out = mx::array(shape, f32, std::make_shared<ConvTransposePatch>(s, bool(bias)), in);
  return x.dtype() == f32 ? out : mx::astype(out, x.dtype(), s);
}

}  // namespace dpt
