// Linear layers: the product through the BLAS, then bias, activation, scale and residual in
// one pass over the output on every thread.
#include "mlx/backend/cpu/encoder.h"

#include "kernels.h"

namespace dpt {

mx::array act_reference(const mx::array& x, Act act, mx::Stream s) {
  switch (act) {
    case Act::gelu:
      return mx::multiply(mx::multiply(x, mx::array(0.5f), s),
                          mx::add(mx::array(1.f), mx::erf(mx::multiply(x, mx::array(float(M_SQRT1_2)), s), s), s),
                          s);
    case Act::relu:
      return mx::maximum(x, mx::array(0.f), s);
    case Act::gelu_tanh: {
      auto inner = mx::multiply(mx::array(0.7978845608028654f),
                                mx::add(x, mx::multiply(mx::array(0.044715f), mx::power(x, mx::array(3.f), s), s), s),
                                s);
      return mx::multiply(mx::multiply(mx::array(0.5f), x, s), mx::add(mx::array(1.f), mx::tanh(inner, s), s), s);
    }
    default:
      return x;
  }
}

namespace {

class Linear : public Kernel {
 public:
  Linear(mx::Stream s, bool bias, bool scale, bool residual, Act act)
      : Kernel(s), bias_(bias), scale_(scale), residual_(residual), act_(act) {}

  const char* name() const override { return "DptLinear"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Linear&>(other);
    return bias_ == o.bias_ && scale_ == o.scale_ && residual_ == o.residual_ && act_ == o.act_;
  }

  std::vector<mx::array> reference(const std::vector<mx::array>& in) override {
    auto s = stream();
    size_t i = 2;
    auto y = mx::matmul(in[0], mx::transpose(in[1], s), s);
    if (bias_) y = mx::add(y, in[i++], s);
    y = act_reference(y, act_, s);
    if (scale_) y = mx::multiply(y, in[i++], s);
    if (residual_) y = mx::add(y, in[i++], s);
    return {y};
  }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const auto& in = inputs;
    auto& out = outputs[0];
    auto& enc = begin(in, out);
    int64_t k = in[1].shape(1), n = in[1].shape(0), m = k ? in[0].size() / k : 0;
    size_t i = 2;
    const float* x = in[0].data<float>();
    const float* w = in[1].data<float>();
    const float* bias = bias_ ? in[i++].data<float>() : nullptr;
    const float* scale = scale_ ? in[i++].data<float>() : nullptr;
    const float* res = residual_ ? in[i++].data<float>() : nullptr;
    float* y = out.data<float>();
    Epilogue e{bias, act_, scale, res, n};
    enc.dispatch([=]() { gemm(true, m, n, k, x, k, w, k, y, n, e); });
  }

 private:
  bool bias_, scale_, residual_;
  Act act_;
};

}  // namespace

mx::array linear(const mx::array& x, const mx::array& w, const OptArray& bias, const OptArray& scale,
                 const OptArray& residual, Act act, mx::StreamOrDevice sd) {
  auto s = mx::to_stream(sd);
  if (w.ndim() != 2 || x.ndim() < 1 || x.shape(-1) != w.shape(1))
    throw std::invalid_argument("linear: x (..., K) and w (N, K) do not match");
  int n = w.shape(0);
  auto shape = x.shape();
  shape.back() = n;
  auto f32 = mx::float32;
  std::vector<mx::array> in{dense(x, s), dense(w, s)};
  for (auto* v : {&bias, &scale}) {
    if (*v) {
      if (v->value().size() != size_t(n)) throw std::invalid_argument("linear: bias/scale must have N values");
      in.push_back(dense(mx::reshape(v->value(), {n}, s), s));
    }
  }
  if (residual) in.push_back(dense(mx::broadcast_to(*residual, shape, s), s));
  auto out = mx::array(shape, f32, std::make_shared<Linear>(s, bool(bias), bool(scale), bool(residual), act), in);
  return out.dtype() == x.dtype() || !mx::issubdtype(x.dtype(), mx::floating) ? out : mx::astype(out, x.dtype(), s);
}

}  // namespace dpt
