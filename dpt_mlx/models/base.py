"""``PreTrainedModel``: what every model class shares (loading, saving, dtype, input layout)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ..io import checkpoint


class PreTrainedModel(nn.Module):
    """``from_pretrained``, ``save_pretrained``, ``dtype`` and input preparation.

    Subclasses set ``head_kind`` ("depth", "segmentation" or None): it selects the weight-table
    renames of the head and the task of pipelines built on the model.
    """

    head_kind: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id,
        dtype=None,
        *,
        torch_dtype=None,
        revision=None,
        token=None,
        cache_dir=None,
        local_files_only: bool = False,
        **unknown,
    ):
        """Load a transformers or dpt_mlx checkpoint: a local directory or a Hugging Face Hub repo id.

        ``torch_dtype`` is an alias of ``dtype`` (as transformers users write it); ``revision``,
        ``token``, ``cache_dir`` and ``local_files_only`` go to huggingface_hub.
        """
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained() got unexpected keyword argument(s) {', '.join(sorted(unknown))}"
            )
        hub = checkpoint.HubOptions(
            revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return checkpoint.load_pretrained(
            path_or_repo_id, cls, dtype=checkpoint.pick_dtype(dtype, torch_dtype), hub=hub
        )

    @classmethod
    def build(cls, config, weights: dict) -> PreTrainedModel:
        """The model a checkpoint with these ``weights`` needs (before loading them)."""
        return cls(config)

    def adapt_checkpoint_keys(self, weights: dict) -> dict:
        """Map a related checkpoint's keys onto this model's (the identity, unless overridden)."""
        return weights

    def save_pretrained(self, path) -> None:
        """Write config.json and model.safetensors (MLX layout) into ``path``."""
        checkpoint.save_pretrained(self, path)

    def train(self, mode: bool = True, freeze_batch_norm: bool = False):
        """Training mode: dropout as configured, BatchNorm on batch statistics with running-stat updates.

        mlx's BatchNorm updates like PyTorch's: ``running = 0.9 * running + 0.1 * batch`` (momentum
        0.1), the running variance from the unbiased (n - 1) batch variance, the normalisation with
        the biased one. ``freeze_batch_norm=True`` keeps every BatchNorm in eval mode (running
        statistics, no updates; its affine weights still train) while the rest trains.
        """
        super().train(mode)
        if mode and freeze_batch_norm:
            for _, module in self.named_modules():
                if isinstance(module, nn.BatchNorm):
                    module.train(False)
        return self

    @property
    def dtype(self) -> mx.Dtype:
        for _, value in tree_flatten(self.parameters()):
            if mx.issubdtype(value.dtype, mx.floating):
                return value.dtype
        return mx.float32

    def _prepare(self, pixel_values) -> mx.array:
        """(B, C, H, W) NumPy/MLX -> (B, H, W, C) mx.array in the model's dtype."""
        if not isinstance(pixel_values, mx.array):
            pixel_values = mx.array(np.asarray(pixel_values, dtype=np.float32))
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        return pixel_values.astype(self.dtype).transpose(0, 2, 3, 1)
