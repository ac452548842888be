"""The training losses: NumPy/PyTorch implementations of the published formulas, the invariances
they claim, masking, and loss + every parameter's gradient against transformers + autograd."""

import copy

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from helpers import TOL, perturb, pixels
from mlx.utils import tree_flatten

import dpt_mlx
from dpt_mlx.io import weights as W
from dpt_mlx.models import losses
from dpt_mlx.ops import interpolate_np

# ----------------------------------------------------------------------------------------------
# Reference implementations, written from the papers / the authors' released loss code


def np_ssi(pred, target, mask=None, alpha=0.5, scales=4):
    """MiDaS ssimse + alpha * gradient matching, "batch-based" reduction, float64, normal equations
    exactly as the released ScaleAndShiftInvariantLoss (compute_scale_and_shift, mse_loss, gradient_loss)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    valid = np.isfinite(target) & (target > 0)
    if mask is not None:
        valid &= mask
    m = valid.astype(np.float64)
    target = np.where(valid, target, 0.0)
    a00, a01, a11 = (m * pred * pred).sum((1, 2)), (m * pred).sum((1, 2)), m.sum((1, 2))
    b0, b1 = (m * pred * target).sum((1, 2)), (m * target).sum((1, 2))
    det = a00 * a11 - a01 * a01
    s = (a11 * b0 - a01 * b1) / det
    t = (-a01 * b0 + a00 * b1) / det
    r = s[:, None, None] * pred + t[:, None, None] - target
    loss = (m * r * r).sum() / (2 * m.sum())
    for k in range(scales):
        step = 2**k
        rr, mm = (m * r)[:, ::step, ::step], m[:, ::step, ::step]
        gx = np.abs(np.diff(rr, axis=2)) * mm[:, :, 1:] * mm[:, :, :-1]
        gy = np.abs(np.diff(rr, axis=1)) * mm[:, 1:, :] * mm[:, :-1, :]
        loss += alpha * (gx.sum() + gy.sum()) / mm.sum()
    return loss


def torch_ssi(pred, target, mask):
    """The same in PyTorch (autograd through s and t), for gradients."""
    m = mask.to(pred.dtype)
    target = torch.where(mask, target, torch.zeros_like(target))
    a00, a01, a11 = (m * pred * pred).sum((1, 2)), (m * pred).sum((1, 2)), m.sum((1, 2))
    b0, b1 = (m * pred * target).sum((1, 2)), (m * target).sum((1, 2))
    det = a00 * a11 - a01 * a01
    s = ((a11 * b0 - a01 * b1) / det)[:, None, None]
    t = ((-a01 * b0 + a00 * b1) / det)[:, None, None]
    r = s * pred + t - target
    loss = (m * r * r).sum() / (2 * m.sum())
    for k in range(4):
        step = 2**k
        rr, mm = (m * r)[:, ::step, ::step], m[:, ::step, ::step]
        gx = (rr[:, :, 1:] - rr[:, :, :-1]).abs() * mm[:, :, 1:] * mm[:, :, :-1]
        gy = (rr[:, 1:, :] - rr[:, :-1, :]).abs() * mm[:, 1:, :] * mm[:, :-1, :]
        loss = loss + 0.5 * (gx.sum() + gy.sum()) / mm.sum()
    return loss


def np_silog(pred, target, mask=None, lambd=0.85):
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    valid = np.isfinite(target) & (target > 0)
    if mask is not None:
        valid &= mask
    g = np.log(pred[valid]) - np.log(target[valid])
    return np.sqrt(np.mean(g**2) - lambd * np.mean(g) ** 2)


def torch_silog(pred, target, mask, lambd=0.85):
    g = torch.log(pred[mask]) - torch.log(target[mask])
    return torch.sqrt((g**2).mean() - lambd * g.mean() ** 2)


def depth_data(b=3, h=24, w=20, seed=0):
    """Positive predictions, disparity-like targets with 0 / NaN / inf / negative invalid pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    pred = (1.0 + rng.random((b, h, w)) + xx).astype(np.float32)
    target = (0.5 + 2 * yy + 0.3 * rng.random((b, h, w))).astype(np.float32)
    invalid = rng.random((b, h, w)) < 0.15
    bad = np.array([0.0, np.nan, np.inf, -1.0, -np.inf], dtype=np.float32)
    target[invalid] = bad[rng.integers(0, len(bad), invalid.sum())]
    return pred, target


def close(a, b, rtol=1e-5):
    a, b = float(a), float(b)
    assert abs(a - b) <= rtol * max(abs(b), 1e-12), (a, b)


# ----------------------------------------------------------------------------------------------
# Relative depth: scale-and-shift-invariant loss


def test_ssi_matches_published_formula():
    pred, target = depth_data()
    close(losses.scale_shift_invariant_loss(pred, target), np_ssi(pred, target))
    close(losses.scale_shift_invariant_loss(pred, target, alpha=0.0), np_ssi(pred, target, alpha=0.0))
    mask = np.random.default_rng(1).random(pred.shape) < 0.7
    close(losses.scale_shift_invariant_loss(pred, target, mask=mask), np_ssi(pred, target, mask=mask))
    assert np_ssi(pred, target) > np_ssi(pred, target, alpha=0.0) > 0  # both terms are live


def test_ssi_gradient_matches_autograd_of_released_code():
    pred, target = depth_data(seed=2)
    mask = np.isfinite(target) & (target > 0)
    p = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    torch_ssi(
        p, torch.tensor(np.nan_to_num(target, nan=0, posinf=0, neginf=0), dtype=torch.float64), torch.tensor(mask)
    ).backward()
    got = mx.grad(lambda x: losses.scale_shift_invariant_loss(x, mx.array(target)))(mx.array(pred))
    ref = p.grad.numpy()
    assert np.abs(np.array(got) - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.all(np.isfinite(np.array(got)))


@pytest.mark.parametrize("scale,shift", [(3.0, 0.5), (0.01, -4.0), (-2.0, 7.0)])
def test_ssi_invariant_to_scale_and_shift_per_image(scale, shift):
    pred, target = depth_data()
    b = pred.shape[0]
    s = (scale * np.array([1.0, 2.0, 0.5])[:b])[:, None, None].astype(np.float32)
    t = (shift * np.array([1.0, -1.0, 3.0])[:b])[:, None, None].astype(np.float32)
    base = float(losses.scale_shift_invariant_loss(pred, target))
    close(losses.scale_shift_invariant_loss(pred * s + t, target), base, rtol=1e-4)


def test_ssi_ignores_masked_pixels():
    pred, target = depth_data()
    rng = np.random.default_rng(3)
    mask = rng.random(pred.shape) < 0.6
    base = float(losses.scale_shift_invariant_loss(pred, target, mask=mask))
    pred2, target2 = pred.copy(), target.copy()
    pred2[~mask] = rng.random((~mask).sum()) * 100
    target2[~mask] = rng.random((~mask).sum()) * 100
    assert float(losses.scale_shift_invariant_loss(pred2, target2, mask=mask)) == pytest.approx(base, rel=1e-6)
    # invalid targets (0 / NaN / inf / negative) are masked by themselves: changing pred there changes nothing
    invalid = ~(np.isfinite(target) & (target > 0))
    pred3 = pred.copy()
    pred3[invalid] = -50.0
    assert float(losses.scale_shift_invariant_loss(pred3, target)) == pytest.approx(
        float(losses.scale_shift_invariant_loss(pred, target)), rel=1e-6
    )
    # and the gradient there is exactly 0 and finite everywhere
    g = np.array(mx.grad(lambda x: losses.scale_shift_invariant_loss(x, mx.array(target)))(mx.array(pred)))
    assert np.all(np.isfinite(g)) and np.all(g[invalid] == 0)


def test_ssi_resizes_prediction_to_labels():
    pred, target = depth_data(h=24, w=20)
    small = pred[:, ::2, ::2].copy()  # (3, 12, 10) against (3, 24, 20) labels
    expected = np_ssi(interpolate_np(small, (24, 20)), target)  # bilinear, align_corners=False
    close(losses.scale_shift_invariant_loss(small, target), expected, rtol=1e-5)


def test_ssi_degenerate_cases():
    pred, target = depth_data()
    assert float(losses.scale_shift_invariant_loss(pred, np.zeros_like(target))) == 0.0  # nothing valid
    const = np.full_like(pred, 2.0)  # singular system: s = 0, t = mean target, still finite
    value = float(losses.scale_shift_invariant_loss(const, target))
    assert np.isfinite(value) and value > 0


# ----------------------------------------------------------------------------------------------
# Metric depth: scale-invariant log loss


def test_silog_matches_formula_and_autograd():
    pred, target = depth_data(seed=4)
    close(losses.silog_loss(pred, target), np_silog(pred, target))
    close(losses.silog_loss(pred, target, lambd=0.5), np_silog(pred, target, lambd=0.5))
    mask = np.isfinite(target) & (target > 0)
    p = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    torch_silog(p, torch.tensor(np.where(mask, target, 1.0), dtype=torch.float64), torch.tensor(mask)).backward()
    got = np.array(mx.grad(lambda x: losses.silog_loss(x, mx.array(target)))(mx.array(pred)))
    assert np.abs(got - p.grad.numpy()).max() <= 1e-4 * np.abs(p.grad.numpy()).max()


def test_silog_scale_invariance_holds_for_lambda_one_only():
    pred, target = depth_data(seed=5)
    # lambda = 1: the standard deviation of log(pred / target), blind to one global scale
    base = float(losses.silog_loss(pred, target, lambd=1.0))
    close(losses.silog_loss(pred * 7.5, target, lambd=1.0), base, rtol=1e-4)
    # ... but pooled over the batch, so a different scale per image is seen
    per_image = np.array([1.0, 3.0, 0.2], dtype=np.float32)[:, None, None]
    assert abs(float(losses.silog_loss(pred * per_image, target, lambd=1.0)) - base) > 1e-2 * base
    # lambda = 0.85 (the default) penalises a global scale error
    default = float(losses.silog_loss(pred, target))
    assert abs(float(losses.silog_loss(pred * 7.5, target)) - default) > 1e-2 * default


def test_silog_ignores_masked_pixels():
    pred, target = depth_data(seed=6)
    rng = np.random.default_rng(6)
    mask = rng.random(pred.shape) < 0.5
    base = float(losses.silog_loss(pred, target, mask=mask))
    pred2, target2 = pred.copy(), target.copy()
    pred2[~mask] = 1e3
    target2[~mask] = 1e-3
    assert float(losses.silog_loss(pred2, target2, mask=mask)) == pytest.approx(base, rel=1e-6)
    assert float(losses.silog_loss(pred, np.full_like(target, np.nan))) == 0.0


def test_depth_loss_selection():
    pred, target = depth_data()

    class Metric:
        depth_estimation_type = "metric"

    assert losses.default_depth_loss(Metric()) == "silog"
    assert losses.default_depth_loss(dpt_mlx.DPTConfig()) == "ssi"
    close(losses.depth_loss(pred, target, "silog"), np_silog(pred, target))
    with pytest.raises(ValueError, match="loss_type"):
        losses.depth_loss(pred, target, "l1")


# ----------------------------------------------------------------------------------------------
# Segmentation: transformers' cross-entropy


def test_segmentation_loss_function_matches_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 9, 7)).astype(np.float32)
    aux = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 13, 11))
    labels[rng.random(labels.shape) < 0.3] = 255
    lt, at = torch.tensor(logits, requires_grad=True), torch.tensor(aux, requires_grad=True)
    size = labels.shape[1:]
    ref = F.cross_entropy(
        F.interpolate(lt, size=size, mode="bilinear", align_corners=False), torch.tensor(labels), ignore_index=255
    )
    ref = ref + 0.4 * F.cross_entropy(
        F.interpolate(at, size=size, mode="bilinear", align_corners=False), torch.tensor(labels), ignore_index=255
    )
    ref.backward()

    def fn(lg, ax):
        return losses.semantic_segmentation_loss(lg, mx.array(labels, dtype=mx.int32), ax, 255, 0.4)

    value, (g1, g2) = mx.value_and_grad(fn, argnums=(0, 1))(mx.array(logits), mx.array(aux))
    close(value, ref.item())
    for ours, theirs in ((g1, lt.grad), (g2, at.grad)):
        assert np.abs(np.array(ours) - theirs.numpy()).max() <= TOL * np.abs(theirs.numpy()).max()
    # everything ignored: 0 (torch: NaN)
    all_ignored = mx.full((2, 13, 11), 255, dtype=mx.int32)
    assert float(losses.semantic_segmentation_loss(mx.array(logits), all_ignored)) == 0.0


def test_segmentation_loss_takes_the_models_channels_first_logits():
    # (1, 3, 4, 4): channels and width could be confused; the loss reads axis 1 as the classes.
    logits = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    labels = np.array([[[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2], [0, 1, 2, 0]]])
    ref = F.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item()
    close(losses.semantic_segmentation_loss(mx.array(logits), mx.array(labels, dtype=mx.int32)), ref)
    with pytest.raises(ValueError, match="batch, num_labels, height, width"):
        losses.semantic_segmentation_loss(mx.zeros((3, 4, 4)), mx.array(labels, dtype=mx.int32))
    with pytest.raises(ValueError, match="same batch"):
        losses.semantic_segmentation_loss(mx.zeros((2, 3, 4, 4)), mx.array(labels, dtype=mx.int32))


def test_segmentation_labels_are_checked():
    with pytest.raises(ValueError, match="outside"):
        losses.check_segmentation_labels(np.array([[[0, 5]]]), num_labels=5, ignore_index=255)
    with pytest.raises(ValueError, match="integer"):
        losses.check_segmentation_labels(np.zeros((1, 2, 2), np.float32), 5, 255)
    assert losses.check_segmentation_labels(np.array([[[0, 4, 255]]]), 5, 255).dtype == mx.int32


# ----------------------------------------------------------------------------------------------
# Models: loss and every parameter's gradient against transformers + autograd


def tiny_config(**overrides):
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=16,
        num_labels=5,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        semantic_classifier_dropout=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_batch_norm_in_fusion_residual=True,
    )
    kwargs.update(overrides)
    config = transformers.DPTConfig(**kwargs)
    config._attn_implementation = "eager"
    return config


def set_modes(ref, ours, bn_mode):
    """Both models in training mode; BatchNorm on batch statistics ("train") or frozen ("frozen")."""
    ref.train()
    ours.train(freeze_batch_norm=bn_mode == "frozen")
    if bn_mode == "frozen":
        for module in ref.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()


# Gradients that vanish in exact arithmetic, so both sides hold float32 cancellation noise:
# attention key biases (softmax ignores a constant added to every score of a query), and under
# the shift-invariant depth loss the depth head's last bias (a sum over all pixels of terms that
# cancel, as the loss cannot see a constant added to the prediction).
ZERO_BY_INVARIANCE = (".attention.attention.key.bias", ".attention.key.bias")


def checkpoint_names(ref, path):
    """Live parameter name -> its key in the checkpoint save_pretrained wrote to ``path``
    (transformers 5 writes legacy keys for some renamed modules, e.g. DINOv2's q_proj), matched
    through the values, which perturb() made distinct."""
    from safetensors.numpy import load_file

    by_value = {}
    for file in sorted(path.glob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            by_value[(value.shape, value.tobytes())] = key
    out = {}
    for key, p in ref.named_parameters():
        value = p.detach().numpy()
        out[key] = by_value[(value.shape, value.tobytes())]
    return out


def compare_gradients(ours, grads, ref, path, head, zero=ZERO_BY_INVARIANCE):
    """Every parameter's gradient against the reference's: per tensor max|ours - ref| / max|ref| <= TOL.

    Tensors named in ``zero`` (gradients that are 0 in exact arithmetic) must instead be at the
    noise level on both sides: max|ours|, max|ref| and max|ours - ref| <= 1e-4 * the model's
    largest gradient. Tensors the reference leaves without a gradient (unused: the encoder's
    final LayerNorm, the first fusion layer's residual unit) must get exactly zero.
    """
    names = checkpoint_names(ref, path)
    torch_grads = {names[k]: mx.array(p.grad.numpy()) for k, p in ref.named_parameters() if p.grad is not None}
    expected = W.sanitize(ours, torch_grads, head)
    got = dict(tree_flatten(grads))
    assert set(expected) <= set(got)
    largest = max(float(np.abs(np.array(v)).max()) for v in expected.values())
    for key, value in got.items():
        a = np.array(value, dtype=np.float64)
        if key not in expected:
            assert np.all(a == 0), f"{key}: the reference has no gradient but ours is nonzero"
            continue
        b = np.array(expected[key], dtype=np.float64)
        if key.endswith(zero):
            assert max(np.abs(a).max(), np.abs(b).max(), np.abs(a - b).max()) <= 1e-4 * largest, key
            continue
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err <= TOL, f"{key}: gradient rel err {err:.2e}"


def compare_running_stats(ours, ref, head):
    params = dict(tree_flatten(ours.parameters()))
    checked = 0
    for key, buf in ref.named_buffers():
        if key.endswith(("running_mean", "running_var")):
            ours_value = np.array(params[W.rename_key(key, head)])
            assert np.abs(ours_value - buf.numpy()).max() <= 1e-5 * max(1.0, np.abs(buf.numpy()).max()), key
            checked += 1
    assert checked > 0


@pytest.mark.parity
@pytest.mark.parametrize("bn_mode", ["train", "frozen"])
def test_segmentation_loss_and_gradients_match_transformers(tmp_path, bn_mode):
    torch.manual_seed(0)
    ref = perturb(transformers.DPTForSemanticSegmentation(tiny_config()), seed=0)
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.DPTForSemanticSegmentation.from_pretrained(tmp_path)
    ref.auxiliary_head.head[3].p = 0.0  # the reference hard-codes dropout 0.1 there
    ours.auxiliary_head.dropout = nn.Dropout(0.0)
    set_modes(ref, ours, bn_mode)
    before = {k: v.clone() for k, v in ref.named_buffers()}

    x = pixels(2, 32, 32)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (2, 48, 40))  # logits are 64x64: a different, non-square size
    labels[rng.random(labels.shape) < 0.2] = 255  # semantic_loss_ignore_index
    out = ref(torch.from_numpy(x), labels=torch.from_numpy(labels))
    out.loss.backward()

    loss, grads = nn.value_and_grad(ours, lambda m: m(x, labels=mx.array(labels)).loss)(ours)
    close(loss, out.loss.item(), rtol=TOL)
    compare_gradients(ours, grads, ref, tmp_path, "segmentation")
    compare_running_stats(ours, ref, "segmentation")
    moved = any(not torch.equal(before[k], v) for k, v in ref.named_buffers() if "running" in k)
    assert moved == (bn_mode == "train")


def relu_margin(model: torch.nn.Module, x: np.ndarray) -> float:
    """The smallest |input| of any ReLU of ``model`` on ``x`` (float64), relative to that ReLU's
    largest: an input within float32 rounding of 0 makes gradients depend on which side the
    rounding falls, so a gradient comparison needs a margin."""
    worst = [1.0]

    def hook(module, inputs, output):
        a = inputs[0].detach().abs()
        worst[0] = min(worst[0], float(a.min() / a.max()))

    double = copy.deepcopy(model).double()
    hooks = [m.register_forward_hook(hook) for m in double.modules() if isinstance(m, torch.nn.ReLU)]
    with torch.no_grad():
        double(torch.from_numpy(x).double())
    for h in hooks:
        h.remove()
    return worst[0]


@pytest.mark.parity
def test_segmentation_without_auxiliary_head_uses_main_loss(tmp_path):
    torch.manual_seed(1)
    ref = perturb(transformers.DPTForSemanticSegmentation(tiny_config(use_auxiliary_head=False)), seed=1)
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.DPTForSemanticSegmentation.from_pretrained(tmp_path)
    x = pixels(2, 32, 32, seed=3)
    # (seed 1 put one input of the head's ReLU at 1e-7 of its range: float32 rounding then decided
    # whether its gradient passed, and the comparison failed by 1e-3 on some BLAS and not others)
    assert relu_margin(ref, x) > 3e-6
    labels = np.random.default_rng(1).integers(0, 5, (2, 40, 40))
    labels[0, :5] = 255
    with pytest.raises(NameError):  # the reference's bug this port does not copy
        ref(torch.from_numpy(x), labels=torch.from_numpy(labels))
    ref.train()
    ours.train()
    logits = ref(torch.from_numpy(x)).logits
    expected = F.cross_entropy(
        F.interpolate(logits, size=(40, 40), mode="bilinear", align_corners=False),
        torch.from_numpy(labels),
        ignore_index=255,
    )
    expected.backward()
    loss, grads = nn.value_and_grad(ours, lambda m: m(x, labels=mx.array(labels)).loss)(ours)
    close(loss, expected.item(), rtol=TOL)
    compare_gradients(ours, grads, ref, tmp_path, "segmentation")


def test_segmentation_one_label_raises_like_reference(tmp_path):
    model = dpt_mlx.DPTForSemanticSegmentation(dpt_mlx.DPTConfig.from_dict(tiny_config(num_labels=1).to_dict()))
    with pytest.raises(ValueError, match="greater than one"):
        model(pixels(1, 32, 32), labels=np.zeros((1, 32, 32), np.int64))
    assert model(pixels(1, 32, 32)).loss is None


@pytest.mark.parity
def test_depth_loss_and_gradients_match_torch(tmp_path):
    """DPT depth + the scale-and-shift-invariant loss: our model and loss against transformers'
    model with the released loss code in PyTorch, labels at another size than the prediction."""
    torch.manual_seed(2)
    ref = perturb(transformers.DPTForDepthEstimation(tiny_config()), seed=2)
    with torch.no_grad():
        ref.head.head[4].bias.fill_(1.0)  # keep the final ReLU open on most pixels
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.DPTForDepthEstimation.from_pretrained(tmp_path)
    set_modes(ref, ours, "train")
    x = pixels(2, 32, 32, seed=2)
    _, target = depth_data(b=2, h=40, w=36, seed=2)  # prediction is 64x64
    mask = np.isfinite(target) & (target > 0)
    pred = ref(torch.from_numpy(x)).predicted_depth
    pred = F.interpolate(pred[:, None], size=(40, 36), mode="bilinear", align_corners=False)[:, 0]
    expected = torch_ssi(pred, torch.tensor(np.where(mask, target, 0.0)), torch.tensor(mask))
    expected.backward()
    loss, grads = nn.value_and_grad(ours, lambda m: m(x, labels=mx.array(target)).loss)(ours)
    close(loss, expected.item(), rtol=TOL)
    compare_gradients(ours, grads, ref, tmp_path, "depth", zero=ZERO_BY_INVARIANCE + ("head.conv3.bias",))
    compare_running_stats(ours, ref, "depth")


@pytest.mark.parity
def test_depth_anything_metric_silog_gradients_match_torch(tmp_path):
    backbone = transformers.Dinov2Config(
        hidden_size=24,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=42,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=24,
        neck_hidden_sizes=[6, 12, 24, 24],
        fusion_hidden_size=16,
        head_hidden_size=32,
        depth_estimation_type="metric",
        max_depth=20,
    )
    torch.manual_seed(3)
    ref = transformers.DepthAnythingForDepthEstimation(config)
    ref.set_attn_implementation("eager")
    ref = perturb(ref, seed=3)
    ref.save_pretrained(tmp_path)
    ours = dpt_mlx.load_model(tmp_path)
    ref.train()
    ours.train()
    x = pixels(2, 42, 42, seed=3)
    rng = np.random.default_rng(3)
    target = (1 + 15 * rng.random((2, 50, 46))).astype(np.float32)
    target[rng.random(target.shape) < 0.1] = 0
    mask = target > 0
    pred = ref(torch.from_numpy(x)).predicted_depth
    pred = F.interpolate(pred[:, None], size=(50, 46), mode="bilinear", align_corners=False)[:, 0]
    expected = torch_silog(pred, torch.tensor(target), torch.tensor(mask))
    expected.backward()
    loss, grads = nn.value_and_grad(ours, lambda m: m(x, labels=mx.array(target)).loss)(ours)
    close(loss, expected.item(), rtol=TOL)
    compare_gradients(ours, grads, ref, tmp_path, "depth")
    # relative checkpoints default to the scale-and-shift-invariant loss; loss_type overrides
    out = ours(x, labels=mx.array(target), loss_type="ssi")
    close(out.loss, losses.scale_shift_invariant_loss(out.predicted_depth, target), rtol=1e-6)
