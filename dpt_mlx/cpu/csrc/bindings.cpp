// Python bindings of the CPU kernels (module dpt_mlx.cpu._kernels).
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include "mlx/version.h"

#include "kernels.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace mx = mlx::core;

namespace {

dpt::Act act_of(const std::string& name) {
  if (name == "none") return dpt::Act::none;
  if (name == "gelu") return dpt::Act::gelu;
  if (name == "relu") return dpt::Act::relu;
  if (name == "gelu_tanh") return dpt::Act::gelu_tanh;
  throw std::invalid_argument("unknown activation '" + name + "' (none, gelu, relu, gelu_tanh)");
}

#define DPT_STR2(x) #x
#define DPT_STR(x) DPT_STR2(x)

}  // namespace

NB_MODULE(_kernels, m) {
  m.doc() = "MLX CPU kernels of dpt_mlx (C++ primitives; float32 compute, half precision rounded back).";
  m.attr("built_with_mlx") =
      DPT_STR(MLX_VERSION_MAJOR) "." DPT_STR(MLX_VERSION_MINOR) "." DPT_STR(MLX_VERSION_PATCH);

  m.def("set_threads", &dpt::set_threads, "n"_a, "Threads of the kernels' pool and of their BLAS.");
  m.def("threads", &dpt::threads, "Threads of the kernels' pool.");
  m.def("load_blas", &dpt::load_blas, "path"_a, "Open the OpenBLAS the kernels call, once per process; its description.");
  m.def("has_mkl", &dpt::has_mkl, "Whether Intel's MKL was linked in (x86-64 builds with mkl-static).");
  m.def("use_mkl", &dpt::use_mkl, "Call the linked-in MKL, once per process; its description.");
  m.def("blas_config", &dpt::blas_config, "The BLAS the kernels call, as it describes itself ('' before one is loaded).");

  m.def(
      "linear",
      [](const mx::array& x, const mx::array& w, std::optional<mx::array> bias, std::optional<mx::array> scale,
         std::optional<mx::array> residual, const std::string& act) {
        return dpt::linear(x, w, bias, scale, residual, act_of(act));
      },
      "x"_a, "weight"_a, "bias"_a = nb::none(), "scale"_a = nb::none(), "residual"_a = nb::none(),
      "act"_a = "none", "residual + scale * act(x @ weight.T + bias).");
  m.def(
      "layer_norm",
      [](const mx::array& x, std::optional<mx::array> w, std::optional<mx::array> b, float eps) {
        return dpt::layer_norm(x, w, b, eps);
      },
      "x"_a, "weight"_a = nb::none(), "bias"_a = nb::none(), "eps"_a = 1e-5f, "LayerNorm over the last axis.");
  m.def(
      "group_norm",
      [](const mx::array& x, std::optional<mx::array> w, std::optional<mx::array> b, int groups, float eps,
         const std::string& act, std::optional<mx::array> residual) {
        return dpt::group_norm(x, w, b, groups, eps, act_of(act), residual);
      },
      "x"_a, "weight"_a, "bias"_a, "groups"_a, "eps"_a = 1e-5f, "act"_a = "none", "residual"_a = nb::none(),
      "act(GroupNorm(x) + residual) over (B, ..., C), groups of contiguous channels (PyTorch's).");
  m.def(
      "activation", [](const mx::array& x, const std::string& act) { return dpt::activation(x, act_of(act)); },
      "x"_a, "act"_a, "act(x) elementwise.");
  m.def(
      "attention",
      [](const mx::array& q, const mx::array& k, const mx::array& v, float scale, std::optional<mx::array> bias,
         std::optional<mx::array> bias_index) { return dpt::attention(q, k, v, scale, bias, bias_index); },
      "q"_a, "k"_a, "v"_a, "scale"_a, "bias"_a = nb::none(), "bias_index"_a = nb::none(),
      "softmax(q @ k^T * scale + bias) @ v for (B, H, N, D) arrays; the result's memory is (B, N, H, D). "
      "With bias_index (Nq, Nk), bias is a (R, H) table and head h adds bias[bias_index, h].");
  m.def(
      "conv2d",
      [](const mx::array& x, const mx::array& w, std::optional<mx::array> bias, std::pair<int, int> stride,
         std::pair<int, int> padding, std::pair<int, int> dilation, bool pre_relu, const std::string& act,
         std::optional<mx::array> residual) {
        return dpt::conv2d(x, w, bias, stride, padding, dilation, pre_relu, act_of(act), residual);
      },
      "x"_a, "weight"_a, "bias"_a = nb::none(), "stride"_a = std::pair<int, int>{1, 1},
      "padding"_a = std::pair<int, int>{0, 0}, "dilation"_a = std::pair<int, int>{1, 1}, "pre_relu"_a = false,
      "act"_a = "none", "residual"_a = nb::none(), "NHWC convolution: act(conv(pre(x)) + bias) + residual.");
  m.def(
      "conv_transpose_patch",
      [](const mx::array& x, const mx::array& w, std::optional<mx::array> bias) {
        return dpt::conv_transpose_patch(x, w, bias);
      },
      "x"_a, "weight"_a, "bias"_a = nb::none(), "NHWC transposed convolution with stride == kernel, no padding.");
  m.def("resize", [](const mx::array& x, const mx::array& ri, const mx::array& rw, const mx::array& ci,
                     const mx::array& cw) { return dpt::resize(x, ri, rw, ci, cw); },
        "x"_a, "rows_index"_a, "rows_weight"_a, "cols_index"_a, "cols_weight"_a,
        "Separable NHWC resize from per-axis (out, taps) indices and weights.");
}
