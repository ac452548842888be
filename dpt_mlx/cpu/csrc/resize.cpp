// Separable NHWC resizes (bilinear and bicubic, either align_corners): each output row is a
// weighted sum of a few input rows, then each output pixel of a few pixels of that row.
// Parallel over output rows; the tap positions and weights come from the caller, so the
// sampling rule (PyTorch's) lives in one place.
#include <algorithm>

#include "mlx/backend/cpu/encoder.h"

#include "kernels.h"
#include "vec.h"

namespace dpt {

namespace {

DPT_CLONES void axpy(float* dst, const float* src, float a, int64_t n, bool first) {
  int64_t j = 0;
  if (first) {
    for (; j + kLanes <= n; j += kLanes) store(dst + j, load(src + j) * a);
    for (; j < n; ++j) dst[j] = src[j] * a;
  } else {
    for (; j + kLanes <= n; j += kLanes) store(dst + j, load(dst + j) + load(src + j) * a);
    for (; j < n; ++j) dst[j] += src[j] * a;
  }
}

class Resize : public Kernel {
 public:
  explicit Resize(mx::Stream s) : Kernel(s) {}
  const char* name() const override { return "DptResize"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }

  std::vector<mx::array> reference(const std::vector<mx::array>& in) override {
    auto s = stream();
    auto along = [&](mx::array x, const mx::array& idx, const mx::array& wt, int axis) {
      int taps = idx.shape(1), n = idx.shape(0);
      mx::Shape wshape{1, 1, 1, 1};
      wshape[axis] = n;
      mx::array y = mx::array(0.f);
      for (int t = 0; t < taps; ++t) {
        auto it = mx::slice(idx, {0, t}, {n, t + 1}, s);
        auto wt_t = mx::reshape(mx::slice(wt, {0, t}, {n, t + 1}, s), wshape, s);
        auto term = mx::multiply(mx::take(x, mx::reshape(it, {n}, s), axis, s), wt_t, s);
        y = t == 0 ? term : mx::add(y, term, s);
      }
      return y;
    };
    return {along(along(in[0], in[1], in[2], 1), in[3], in[4], 2)};
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& in = inputs;
    auto& out = outputs[0];
    auto& enc = begin(in, out);
    int64_t b = in[0].shape(0), h = in[0].shape(1), w = in[0].shape(2), c = in[0].shape(3);
    int64_t oh = out.shape(1), ow = out.shape(2), tr = in[1].shape(1), tc = in[3].shape(1);
    const float* x = in[0].data<float>();
    const int32_t* ri = in[1].data<int32_t>();
    const float* rw = in[2].data<float>();
    const int32_t* ci = in[3].data<int32_t>();
    const float* cw = in[4].data<float>();
    float* y = out.data<float>();
    enc.dispatch([=]() {
      parallel_for(b * oh, 1, [&](int64_t r0, int64_t r1) {
        float* row = scratch(4, size_t(w * c));
        for (int64_t r = r0; r < r1; ++r) {
          int64_t bi = r / oh, oy = r % oh;
          for (int64_t t = 0; t < tr; ++t)
            axpy(row, x + (bi * h + std::clamp<int64_t>(ri[oy * tr + t], 0, h - 1)) * w * c, rw[oy * tr + t], w * c, t == 0);
          float* dst = y + r * ow * c;
          for (int64_t ox = 0; ox < ow; ++ox)
            for (int64_t t = 0; t < tc; ++t)
              axpy(dst + ox * c, row + std::clamp<int64_t>(ci[ox * tc + t], 0, w - 1) * c, cw[ox * tc + t], c, t == 0);
        }
      });
    });
  }
};

}  // namespace

mx::array resize(const mx::array& x, const mx::array& rows_index, const mx::array& rows_weight,
                 const mx::array& cols_index, const mx::array& cols_weight, mx::StreamOrDevice sd) {
  auto s = mx::to_stream(sd);
  if (x.ndim() != 4 || rows_index.ndim() != 2 || cols_index.ndim() != 2 ||
      rows_index.shape() != rows_weight.shape() || cols_index.shape() != cols_weight.shape())
    throw std::invalid_argument("resize: x (B, H, W, C) with (out, taps) indices and weights per axis");
  auto f32 = mx::float32;
  mx::Shape shape{x.shape(0), rows_index.shape(0), cols_index.shape(0), x.shape(3)};
  auto index = [&](const mx::array& a) { return mx::contiguous(mx::astype(a, mx::int32, s), false, s); };
  std::vector<mx::array> in{dense(x, s), index(rows_index), dense(rows_weight, s), index(cols_index),
                            dense(cols_weight, s)};
  auto out = mx::array(shape, f32, std::make_shared<Resize>(s), in);
  return x.dtype() == f32 ? out : mx::astype(out, x.dtype(), s);
}

}  // namespace dpt
