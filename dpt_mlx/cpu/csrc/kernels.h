// The graph-level operations of the CPU kernels: each builds an MLX array computed by one of
// the primitives here. Half-precision inputs are computed in float32 and rounded back.
#pragma once

#include <optional>

#include "common.h"

namespace dpt {

using OptArray = std::optional<mx::array>;

// act(x) in MLX ops (the reference of the fused activations).
mx::array act_reference(const mx::array& x, Act act, mx::Stream s);

// residual + scale * act(x @ w^T + bias); x (..., K), w (N, K), bias/scale (N), residual (..., N).
mx::array linear(const mx::array& x, const mx::array& w, const OptArray& bias, const OptArray& scale,
                 const OptArray& residual, Act act, mx::StreamOrDevice s = {});

// LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias.
mx::array layer_norm(const mx::array& x, const OptArray& weight, const OptArray& bias, float eps,
                     mx::StreamOrDevice s = {});

// act(GroupNorm(x) + residual) over (B, ..., C), `groups` groups of contiguous channels (PyTorch's).
mx::array group_norm(const mx::array& x, const OptArray& weight, const OptArray& bias, int groups, float eps, Act act,
                     const OptArray& residual = std::nullopt, mx::StreamOrDevice s = {});

// act(x) elementwise.
mx::array activation(const mx::array& x, Act act, mx::StreamOrDevice s = {});

// softmax(q @ k^T * scale + bias) @ v for q (B, H, Nq, D), k/v (B, H, Nk, D), bias broadcastable
// to (B, H, Nq, Nk), or, with bias_index (Nq, Nk integers), bias is a (R, H) table and head h's
// bias is bias[bias_index, h]. The result is laid out (B, Nq, H, D) in memory, so that
// out.transpose(0, 2, 1, 3).reshape(B, Nq, H * D) is free.
mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale, const OptArray& bias,
                    const OptArray& bias_index = std::nullopt, mx::StreamOrDevice s = {});

// NHWC convolution (groups 1): post(conv(pre(x), w) + bias) + residual, w (O, kh, kw, I);
// pre/post are ReLU when asked.
mx::array conv2d(const mx::array& x, const mx::array& w, const OptArray& bias, std::pair<int, int> stride,
                 std::pair<int, int> padding, std::pair<int, int> dilation, bool pre_relu, Act post,
                 const OptArray& residual, mx::StreamOrDevice s = {});

// NHWC transposed convolution whose stride equals its square kernel (no padding): every input
// pixel writes its own k x k block; w (O, k, k, I).
mx::array conv_transpose_patch(const mx::array& x, const mx::array& w, const OptArray& bias,
                               mx::StreamOrDevice s = {});

// Separable NHWC resize: each output row (column) is the weighted sum of `taps` input rows
// (columns): rows_index/rows_weight (out_h, taps), cols_index/cols_weight (out_w, taps).
mx::array resize(const mx::array& x, const mx::array& rows_index, const mx::array& rows_weight,
                 const mx::array& cols_index, const mx::array& cols_weight, mx::StreamOrDevice s = {});

}  // namespace dpt
