// LayerNorm over rows, GroupNorm (PyTorch's grouping: contiguous channels) with its activation,
// and standalone activations, on every thread.
#include <vector>

#include "mlx/backend/cpu/encoder.h"

#include "kernels.h"
#include "vec.h"

namespace dpt {

namespace {

// y = x * scale + shift (+ res)
DPT_CLONES void affine_row(float* y, const float* x, const float* scale, const float* shift, const float* res,
                           int64_t c) {
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes) {
    vf v = load(x + j) * load(scale + j) + load(shift + j);
    store(y + j, res ? v + load(res + j) : v);
  }
  for (; j < c; ++j) y[j] = x[j] * scale[j] + shift[j] + (res ? res[j] : 0.f);
}

DPT_CLONES void layer_norm_rows(float* y, const float* x, int64_t rows, int64_t c, const float* w, const float* b,
                                float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    vf acc = splat(0.f);
    int64_t j = 0;
    for (; j + kLanes <= c; j += kLanes) acc += load(xr + j);
    float sum = hsum(acc);
    for (; j < c; ++j) sum += xr[j];
    float mean = sum / float(c);
    vf acc2 = splat(0.f);
    j = 0;
    for (; j + kLanes <= c; j += kLanes) {
      vf d = load(xr + j) - mean;
      acc2 += d * d;
    }
    float var = hsum(acc2);
    for (; j < c; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    float inv = 1.f / std::sqrt(var / float(c) + eps);
    j = 0;
    for (; j + kLanes <= c; j += kLanes) {
      vf v = (load(xr + j) - mean) * inv;
      if (w) v *= load(w + j);
      if (b) v += load(b + j);
      store(yr + j, v);
    }
    for (; j < c; ++j) {
      float v = (xr[j] - mean) * inv;
      if (w) v *= w[j];
      if (b) v += b[j];
      yr[j] = v;
    }
  }
}

class LayerNorm : public Kernel {
 public:
  LayerNorm(mx::Stream s, bool weight, bool bias, float eps) : Kernel(s), weight_(weight), bias_(bias), eps_(eps) {}
  const char* name() const override { return "DptLayerNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const LayerNorm&>(other);
    return weight_ == o.weight_ && bias_ == o.bias_ && eps_ == o.eps_;
  }

  std::vector<mx::array> reference(const std::vector<mx::array>& in) override {
    auto s = stream();
    auto x = in[0];
    auto mean = mx::mean(x, -1, true, s);
    auto d = mx::subtract(x, mean, s);
    auto var = mx::mean(mx::square(d, s), -1, true, s);
    auto y = mx::multiply(d, mx::rsqrt(mx::add(var, mx::array(eps_), s), s), s);
    size_t i = 1;
    if (weight_) y = mx::multiply(y, in[i++], s);
    if (bias_) y = mx::add(y, in[i++], s);
    return {y};
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& in = inputs;
    auto& out = outputs[0];
    auto& enc = begin(in, out);
    int64_t c = in[0].shape(-1), rows = c ? in[0].size() / c : 0;
    size_t i = 1;
    const float* x = in[0].data<float>();
    const float* w = weight_ ? in[i++].data<float>() : nullptr;
    const float* b = bias_ ? in[i++].data<float>() : nullptr;
    float* y = out.data<float>();
    float eps = eps_;
    enc.dispatch([=]() {
      parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(c, 1)), [&](int64_t r0, int64_t r1) {
        layer_norm_rows(y + r0 * c, x + r0 * c, r1 - r0, c, w, b, eps);
      });
    });
  }

 private:
  bool weight_, bias_;
  float eps_;
};

// GroupNorm statistics of one (batch, group): mean and 1 / sqrt(var + eps) over `pixels` rows of
// `cg` channels at stride `c`.
DPT_CLONES void group_stats(const float* x, int64_t pixels, int64_t c, int64_t cg, float eps, float* mean_out,
                            float* rstd_out) {
  double sum = 0.0;
  for (int64_t p = 0; p < pixels; ++p) {
    const float* row = x + p * c;
    float s = 0.f;
    for (int64_t j = 0; j < cg; ++j) s += row[j];
    sum += s;
  }
  double n = double(pixels) * double(cg), mean = sum / n, sq = 0.0;
  float m = float(mean);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* row = x + p * c;
    float s = 0.f;
    for (int64_t j = 0; j < cg; ++j) s += (row[j] - m) * (row[j] - m);
    sq += s;
  }
  *mean_out = m;
  *rstd_out = float(1.0 / std::sqrt(sq / n + double(eps)));
}

class GroupNorm : public Kernel {
 public:
  GroupNorm(mx::Stream s, int groups, bool affine, float eps, Act act, bool residual)
      : Kernel(s), groups_(groups), affine_(affine), eps_(eps), act_(act), residual_(residual) {}
  const char* name() const override { return "DptGroupNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const GroupNorm&>(other);
    return groups_ == o.groups_ && affine_ == o.affine_ && eps_ == o.eps_ && act_ == o.act_ &&
           residual_ == o.residual_;
  }

  std::vector<mx::array> reference(const std::vector<mx::array>& in) override {
    auto s = stream();
    const auto& x = in[0];
    int c = x.shape(-1), b = x.shape(0);
    auto g = mx::reshape(x, {b, -1, groups_, c / groups_}, s);
    auto mean = mx::mean(g, std::vector<int>{1, 3}, true, s);
    auto var = mx::var(g, std::vector<int>{1, 3}, true, 0, s);
    auto y = mx::reshape(mx::multiply(mx::subtract(g, mean, s), mx::rsqrt(mx::add(var, mx::array(eps_), s), s), s),
                         x.shape(), s);
    if (affine_) y = mx::add(mx::multiply(y, in[1], s), in[2], s);
    if (residual_) y = mx::add(y, in.back(), s);
    return {act_reference(y, act_, s)};
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& in = inputs;
    auto& out = outputs[0];
    auto& enc = begin(in, out);
    int64_t c = in[0].shape(-1), b = in[0].shape(0), pixels = c ? in[0].size() / (c * b) : 0, groups = groups_;
    const float* x = in[0].data<float>();
    const float* w = affine_ ? in[1].data<float>() : nullptr;
    const float* bias = affine_ ? in[2].data<float>() : nullptr;
    const float* res = residual_ ? in.back().data<float>() : nullptr;
    float* y = out.data<float>();
    float eps = eps_;
    Act act = act_;
    enc.dispatch([=]() {
      int64_t cg = c / groups;
      std::vector<float> scale(size_t(b * c)), shift(size_t(b * c));
      parallel_for(b * groups, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          int64_t bi = t / groups, g = t % groups;
          float mean, rstd;
          group_stats(x + bi * pixels * c + g * cg, pixels, c, cg, eps, &mean, &rstd);
          for (int64_t j = g * cg; j < (g + 1) * cg; ++j) {
            float k = rstd * (w ? w[j] : 1.f);
            scale[bi * c + j] = k;
            shift[bi * c + j] = (bias ? bias[j] : 0.f) - mean * k;
          }
        }
      });
      parallel_for(b * pixels, std::max<int64_t>(1, 4096 / std::max<int64_t>(c, 1)), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          int64_t bi = p / pixels;
          affine_row(y + p * c, x + p * c, scale.data() + bi * c, shift.data() + bi * c, res ? res + p * c : nullptr,
                     c);
        }
        Epilogue e{nullptr, act};
        epilogue_tile(y + p0 * c, c, p1 - p0, c, 0, 0, e);
      });
    });
  }

 private:
  int groups_;
  bool affine_;
  float eps_;
  Act act_;
  bool residual_;
};

class Activation : public Kernel {
 public:
  Activation(mx::Stream s, Act act) : Kernel(s), act_(act) {}
  const char* name() const override { return "DptActivation"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return act_ == static_cast<const Activation&>(other).act_;
  }
  std::vector<mx::array> reference(const std::vector<mx::array>& in) override;

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& x = inputs[0];
    auto& out = outputs[0];
    auto& enc = begin(inputs, out);
    const float* src = x.data<float>();
    float* dst = out.data<float>();
    int64_t n = x.size();
    Epilogue e{nullptr, act_};
    enc.dispatch([=]() {
      parallel_for(n, int64_t(1) << 14, [&](int64_t b, int64_t end) {
        std::memcpy(dst + b, src + b, size_t(end - b) * sizeof(float));
        epilogue_tile(dst + b, end - b, 1, end - b, 0, 0, e);
      });
    });
  }

 private:
  Act act_;
};

}  // namespace

std::vector<mx::array> Activation::reference(const std::vector<mx::array>& in) {
  return {act_reference(in[0], act_, stream())};
}

mx::array layer_norm(const mx::array& x, const OptArray& weight, const OptArray& bias, float eps,
                     mx::StreamOrDevice sd) {
  auto s = mx::to_stream(sd);
  auto f32 = mx::float32;
  int c = x.ndim() ? x.shape(-1) : 0;
  std::vector<mx::array> in{dense(x, s)};
  for (auto* v : {&weight, &bias}) {
    if (*v) {
      if (v->value().size() != size_t(c)) throw std::invalid_argument("layer_norm: weight/bias must have C values");
      in.push_back(dense(mx::reshape(v->value(), {c}, s), s));
    }
  }
  auto out = mx::array(x.shape(), f32, std::make_shared<LayerNorm>(s, bool(weight), bool(bias), eps), in);
  return x.dtype() == f32 ? out : mx::astype(out, x.dtype(), s);
}

mx::array group_norm(const mx::array& x, const OptArray& weight, const OptArray& bias, int groups, float eps, Act act,
                     const OptArray& residual, mx::StreamOrDevice sd) {
  auto s = mx::to_stream(sd);
  int c = x.ndim() ? x.shape(-1) : 0;
  if (x.ndim() < 2 || groups < 1 || c % groups != 0)
    throw std::invalid_argument("group_norm: x (B, ..., C) with C a multiple of groups");
  if (bool(weight) != bool(bias)) throw std::invalid_argument("group_norm: weight and bias come together");
  std::vector<mx::array> in{dense(x, s)};
  if (weight) {
    in.push_back(dense(mx::reshape(*weight, {c}, s), s));
    in.push_back(dense(mx::reshape(*bias, {c}, s), s));
  }
  if (residual) in.push_back(dense(mx::broadcast_to(*residual, x.shape(), s), s));
  auto out = mx::array(x.shape(), mx::float32,
                       std::make_shared<GroupNorm>(s, groups, bool(weight), eps, act, bool(residual)), in);
  return x.dtype() == mx::float32 ? out : mx::astype(out, x.dtype(), s);
}

mx::array activation(const mx::array& x, Act act, mx::StreamOrDevice sd) {
  auto s = mx::to_stream(sd);
  auto out = mx::array(x.shape(), mx::float32, std::make_shared<Activation>(s, act), {dense(x, s)});
  return x.dtype() == mx::float32 ? out : mx::astype(out, x.dtype(), s);
}

}  // namespace dpt
