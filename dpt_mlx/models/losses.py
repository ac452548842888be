"""Training losses: transformers' segmentation loss, and depth losses the reference does not have.

Layouts are the public ones: logits (B, C, h, w), depth (B, h, w), labels (B, H, W). A prediction
whose size differs from its labels is first resized to the labels' size (bilinear,
``align_corners=False``, exactly ``torch.nn.functional.interpolate``). Losses are computed in
float32 whatever the model's dtype.

Segmentation (transformers' ``DPTForSemanticSegmentation``)::

    loss = CE(upsample(logits), labels) + auxiliary_loss_weight * CE(upsample(auxiliary_logits), labels)

with CE the mean over pixels whose label is not ``ignore_index`` of ``logsumexp(z) - z[label]``.

Relative depth (DPT, Depth Anything ``relative``): the scale-and-shift-invariant loss of MiDaS,
Ranftl et al., "Towards Robust Monocular Depth Estimation: Mixing Datasets for Zero-shot
Cross-dataset Transfer", TPAMI 2022 (arXiv:1907.01341), in its ``ssimse`` variant with the
multi-scale gradient-matching term, as in the authors' released loss code (the
``ScaleAndShiftInvariantLoss`` gist linked from the MiDaS repository, "batch-based" reduction).
The prediction ``d`` and the target ``d*`` are both disparities (inverse depth, the space DPT
predicts in). With ``M_b`` the valid pixels of image ``b`` and ``M = sum_b M_b``::

    (s_b, t_b)   = argmin_{s,t} sum_{i in M_b} (s d_i + t - d*_i)^2          (least squares, per image)
    R_i          = s_b d_i + t_b - d*_i
    L_ssimse     = 1 / (2 M) * sum_b sum_{i in M_b} R_i^2
    L_reg        = sum_{k=0}^{K-1} 1 / M^k * sum_b sum_i (|grad_x R^k_i| + |grad_y R^k_i|)
    L_ssi        = L_ssimse + alpha * L_reg,    alpha = 0.5, K = 4

``R^k`` is the residual map subsampled with stride ``2^k`` (``R[:, ::2^k, ::2^k]``, as the
released code does), ``M^k`` the valid pixels of the subsampled mask, and a finite difference
counts only where both of its pixels are valid. Gradients flow through ``s`` and ``t``, as in the
released code. ``s`` and ``t`` are computed in the centred (numerically safer) form
``s = sum m (d - mean d)(d* - mean d*) / sum m (d - mean d)^2``, ``t = mean d* - s mean d``, the
same least-squares solution as the released code's 2x2 normal equations; where the system is
singular (a constant prediction, or fewer than two valid pixels) ``s = 0`` and ``t`` is the target's
mean (the released code leaves ``s = t = 0`` there). A batch without a valid pixel has loss 0.
The loss is invariant to ``d -> a d + c`` for any ``a != 0`` per image.

Metric depth (Depth Anything ``metric``): the scale-invariant log loss of Eigen et al.,
"Depth Map Prediction from a Single Image using a Multi-Scale Deep Network", NeurIPS 2014, in
the square-root form used by AdaBins (Bhat et al., CVPR 2021) and by Depth Anything's metric
fine-tuning code (``SiLogLoss``), pooled over all valid pixels of the batch, with ``lambda = 0.85``
(AdaBins' value; Depth Anything V2 uses 0.5, Eigen et al. 0.5) and without AdaBins' factor 10::

    g_i   = log(pred_i) - log(target_i)
    L     = sqrt( mean_i g_i^2 - lambda * (mean_i g_i)^2 )

Predictions are clamped to at least ``1e-6`` before the log (a ReLU head can output 0) and the
radicand to at least ``1e-12`` (its square root has an infinite slope at 0). With ``lambda = 1``
the loss is the standard deviation of ``g``: invariant to multiplying every prediction of the
batch by one constant; with ``lambda < 1`` it is not scale-invariant (it penalises a global
scale error by ``(1 - lambda)``).

Invalid pixels: a depth target that is 0, negative, NaN or infinite is ignored (and a ``mask``
can exclude more). Masked pixels take no part in the loss: their values cannot change it.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..ops import interpolate

SSI, SILOG = "ssi", "silog"
DEPTH_LOSSES = (SSI, SILOG)
SSI_ALPHA, SSI_SCALES = 0.5, 4
SILOG_LAMBDA = 0.85
_LOG_EPS = 1e-6
_SQRT_EPS = 1e-12


# ----------------------------------------------------------------------------------------------
# Helpers


def _as_array(x, dtype=None) -> mx.array:
    if not isinstance(x, mx.array):
        x = mx.array(np.asarray(x))
    return x.astype(dtype) if dtype is not None else x


def resize_to(x: mx.array, size: tuple[int, int]) -> mx.array:
    """(B, h, w) or (B, h, w, C) -> the same at ``size`` (bilinear, align_corners=False)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    if x.ndim == 3:
        return interpolate(x[..., None], size, "bilinear", align_corners=False)[..., 0]
    return interpolate(x, size, "bilinear", align_corners=False)


def valid_depth_mask(target: mx.array, mask: mx.array | None = None) -> mx.array:
    """True where the target is a finite positive number (and ``mask``, if given, is true)."""
    valid = mx.isfinite(target) & (target > 0)
    if mask is not None:
        valid = valid & _as_array(mask).astype(mx.bool_)
    return valid


def _prepare_depth(prediction, target, mask):
    """float32 (B, H, W) prediction at the target's size, target with invalid pixels zeroed, 0/1 mask."""
    target = _as_array(target, mx.float32)
    prediction = _as_array(prediction, mx.float32)
    if prediction.ndim != 3 or target.ndim != 3 or prediction.shape[0] != target.shape[0]:
        raise ValueError(
            f"depth prediction and labels must be (batch, height, width) with the same batch size, "
            f"got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(target.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the labels' {tuple(target.shape)}")
    prediction = resize_to(prediction, target.shape[1:])
    valid = valid_depth_mask(target, mask)
    # where(), not multiplication: NaN * 0 is NaN, and a NaN must not reach the sums or the gradient.
    target = mx.where(valid, target, 0.0)
    return prediction, target, valid.astype(mx.float32)


# ----------------------------------------------------------------------------------------------
# Relative depth: scale-and-shift-invariant MSE + multi-scale gradient matching (MiDaS)


def scale_and_shift(prediction: mx.array, target: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """Per-image least-squares (s, t), each (B,): argmin sum mask * (s * prediction + t - target)^2."""
    axes = (1, 2)
    count = mask.sum(axes)
    n = mx.maximum(count, 1.0)
    p_mean = (mask * prediction).sum(axes) / n
    t_mean = (mask * target).sum(axes) / n
    pc = mask * (prediction - p_mean[:, None, None])
    tc = mask * (target - t_mean[:, None, None])
    var = (pc * pc).sum(axes)
    cov = (pc * tc).sum(axes)
    ok = var > 0
    scale = mx.where(ok, cov / mx.where(ok, var, 1.0), 0.0)
    shift = t_mean - scale * p_mean
    return scale, shift


def _safe_ratio(numerator: mx.array, denominator: mx.array) -> mx.array:
    """numerator / denominator, or 0 where the denominator is 0 (nothing valid to average over)."""
    ok = denominator > 0
    return mx.where(ok, numerator / mx.where(ok, denominator, 1.0), 0.0)


def gradient_matching_loss(residual: mx.array, mask: mx.array, scales: int = SSI_SCALES) -> mx.array:
    """sum over scales k of (sum |grad_x R^k| + |grad_y R^k| over valid pairs) / (valid pixels at scale k)."""
    total = mx.array(0.0)
    for k in range(scales):
        step = 2**k
        r = (mask * residual)[:, ::step, ::step]
        m = mask[:, ::step, ::step]
        grad_x = mx.abs(r[:, :, 1:] - r[:, :, :-1]) * (m[:, :, 1:] * m[:, :, :-1])
        grad_y = mx.abs(r[:, 1:, :] - r[:, :-1, :]) * (m[:, 1:, :] * m[:, :-1, :])
        total = total + _safe_ratio(grad_x.sum() + grad_y.sum(), m.sum())
    return total


def scale_shift_invariant_loss(
    prediction,
    target,
    mask=None,
    alpha: float = SSI_ALPHA,
    scales: int = SSI_SCALES,
) -> mx.array:
    """MiDaS' ``ssimse`` + ``alpha`` * multi-scale gradient matching, on disparities (see the module docs).

    ``prediction`` (B, h, w) is resized to ``target`` (B, H, W) if their sizes differ; target
    pixels that are 0, negative or not finite are ignored, and so are those where ``mask`` is false.
    """
    prediction, target, mask = _prepare_depth(prediction, target, mask)
    scale, shift = scale_and_shift(prediction, target, mask)
    residual = scale[:, None, None] * prediction + shift[:, None, None] - target
    loss = _safe_ratio((mask * residual * residual).sum(), 2.0 * mask.sum())
    if alpha > 0:
        loss = loss + alpha * gradient_matching_loss(residual, mask, scales)
    return loss


# ----------------------------------------------------------------------------------------------
# Metric depth: scale-invariant log loss (Eigen et al. 2014, square-root form)


def silog_loss(prediction, target, mask=None, lambd: float = SILOG_LAMBDA) -> mx.array:
    """``sqrt(mean g^2 - lambd * (mean g)^2)``, ``g = log(pred) - log(target)`` over the batch's valid pixels."""
    prediction, target, mask = _prepare_depth(prediction, target, mask)
    g = mx.log(mx.maximum(prediction, _LOG_EPS)) - mx.log(mx.where(mask > 0, target, 1.0))
    g = mask * g
    n = mask.sum()
    mean_sq = _safe_ratio((g * g).sum(), n)
    mean = _safe_ratio(g.sum(), n)
    radicand = mean_sq - lambd * mean * mean
    return mx.where(n > 0, mx.sqrt(mx.maximum(radicand, _SQRT_EPS)), 0.0)


def default_depth_loss(config) -> str:
    """``"silog"`` for metric checkpoints (``depth_estimation_type == "metric"``), else ``"ssi"``."""
    return SILOG if getattr(config, "depth_estimation_type", "relative") == "metric" else SSI


def depth_loss(prediction, labels, loss_type: str = SSI, mask=None) -> mx.array:
    """The depth loss by name: ``"ssi"`` (:func:`scale_shift_invariant_loss`) or ``"silog"`` (:func:`silog_loss`).

    ``labels`` are in the prediction's space: disparity for relative models, metric depth for metric ones.
    """
    if loss_type == SSI:
        return scale_shift_invariant_loss(prediction, labels, mask)
    if loss_type == SILOG:
        return silog_loss(prediction, labels, mask)
    raise ValueError(f"loss_type={loss_type!r} is not one of {', '.join(DEPTH_LOSSES)}")


# ----------------------------------------------------------------------------------------------
# Semantic segmentation: transformers' cross-entropy with ignore_index and the auxiliary head


def check_segmentation_labels(labels, num_labels: int, ignore_index: int) -> mx.array:
    """(B, H, W) integer class ids; any value outside [0, num_labels) other than ``ignore_index`` is an error."""
    array = _as_array(labels)
    if array.ndim != 3:
        raise ValueError(f"segmentation labels must be (batch, height, width), got shape {tuple(array.shape)}")
    if not mx.issubdtype(array.dtype, mx.integer):
        raise ValueError(f"segmentation labels must be integer class ids, got dtype {array.dtype}")
    bad = (array != ignore_index) & ((array < 0) | (array >= num_labels))
    if bad.any().item():
        value = int(np.asarray(array)[np.asarray(bad)][0])
        raise ValueError(
            f"segmentation label {value} is outside [0, {num_labels}) and is not the ignore index {ignore_index}"
        )
    return array.astype(mx.int32)


def cross_entropy(logits_nhwc: mx.array, labels: mx.array, ignore_index: int) -> mx.array:
    """Mean over non-ignored pixels of ``logsumexp(z) - z[label]``; logits (B, H, W, C), labels (B, H, W).

    If every pixel is ignored, PyTorch returns NaN (0 / 0); this returns 0 so that such a batch
    leaves the weights alone.
    """
    logits_nhwc = logits_nhwc.astype(mx.float32)
    valid = labels != ignore_index
    safe = mx.where(valid, labels, 0)
    picked = mx.take_along_axis(logits_nhwc, safe[..., None], axis=-1)[..., 0]
    nll = mx.logsumexp(logits_nhwc, axis=-1) - picked
    weights = valid.astype(mx.float32)
    return _safe_ratio((weights * nll).sum(), weights.sum())


def semantic_segmentation_loss(
    logits: mx.array,
    labels: mx.array,
    auxiliary_logits: mx.array | None = None,
    ignore_index: int = 255,
    auxiliary_weight: float = 0.4,
) -> mx.array:
    """transformers' loss: logits upsampled to the labels' size, CE + weight * auxiliary CE.

    ``logits`` and ``auxiliary_logits`` are (B, num_labels, h, w), as the models return them;
    ``labels`` (B, H, W) integer class ids in [0, num_labels) or ``ignore_index`` (others are a
    ValueError). Without auxiliary logits the loss is the main term alone
    (transformers raises a NameError in that case).
    """
    labels = _as_array(labels)
    size = tuple(labels.shape[1:])
    logits = _logits_nhwc(logits, labels)
    # an id outside the classes would index past the logits: garbage, not an error, in take_along_axis
    labels = check_segmentation_labels(labels, logits.shape[-1], ignore_index)
    loss = cross_entropy(resize_to(logits, size), labels, ignore_index)
    if auxiliary_logits is not None:
        aux = cross_entropy(resize_to(_logits_nhwc(auxiliary_logits, labels), size), labels, ignore_index)
        loss = loss + auxiliary_weight * aux
    return loss


def _logits_nhwc(logits, labels: mx.array) -> mx.array:
    """(B, C, h, w) logits -> (B, h, w, C) float32, after checking they can be the labels' logits."""
    logits = _as_array(logits)
    if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits must be (batch, num_labels, height, width) and labels (batch, height, width) with the same "
            f"batch, got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return logits.astype(mx.float32).transpose(0, 2, 3, 1)


def model_depth_loss(config, prediction, labels, loss_type: str | None = None) -> mx.array | None:
    """The loss a depth model returns for ``labels`` (None without labels); ``loss_type`` defaults
    to :func:`default_depth_loss` of the config."""
    if labels is None:
        return None
    return depth_loss(prediction, labels, loss_type or default_depth_loss(config))
