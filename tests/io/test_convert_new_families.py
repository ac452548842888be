"""Converter, dtype and quantisation for the newer families (CHMv2 on DINOv3, TIPSv2-DPT), as for the rest:
convert.py verifies its output against the transformers checkpoint, and a float16 or 8-bit copy stays close
to float32."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from helpers import pixels
from model_configs import chmv2_config, chmv2_reference, tipsv2_reference

import dpt_mlx
from dpt_mlx.io.convert import convert

BUILDERS = {
    "chmv2": (lambda: chmv2_reference(chmv2_config()), "predicted_depth", 32),
    "tipsv2-dense": (lambda: tipsv2_reference(transformers.Tipsv2DptForDensePrediction, 5), "normals", 42),
}


def _out(model, field, size):
    return np.array(getattr(model(pixels(1, size, size, seed=8)), field), dtype=np.float32)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_convert_dtype_and_quantise(family, tmp_path):
    build, field, size = BUILDERS[family]
    build().save_pretrained(tmp_path / "hf")
    reference = _out(dpt_mlx.load_model(tmp_path / "hf"), field, size)
    scale = np.abs(reference).max()
    out = convert(tmp_path / "hf", tmp_path / "mlx")  # verified against the transformers checkpoint
    assert np.array_equal(_out(dpt_mlx.load_model(out), field, size), reference)
    half = convert(tmp_path / "hf", tmp_path / "f16", dtype="float16")
    assert np.abs(_out(dpt_mlx.load_model(half), field, size) - reference).max() < 0.05 * scale
    report = {}
    q8 = convert(tmp_path / "hf", tmp_path / "q8", quantize=True, q_bits=8, q_group_size=32, report=report)
    assert report["quantization_error"] < 0.1
    assert np.abs(_out(dpt_mlx.load_model(q8), field, size) - reference).max() < 0.25 * scale


@pytest.mark.timeout(180)
def test_tipsv2_checkpoints_without_architectures_load_as_the_model_they_hold(tmp_path):
    """A config.json that does not name the class: the decoders the weights hold decide, in the layout
    save_pretrained writes (the hub's) and in transformers' in-memory names."""
    import json

    from safetensors.torch import save_file

    for seed, cls in enumerate(
        (
            transformers.Tipsv2DptForDensePrediction,
            transformers.Tipsv2DptForDepthEstimation,
            transformers.Tipsv2DptForNormalEstimation,
            transformers.Tipsv2DptForSemanticSegmentation,
        )
    ):
        reference = tipsv2_reference(cls, seed)
        for layout in ("saved", "in-memory"):
            folder = tmp_path / f"{cls.__name__}-{layout}"
            reference.save_pretrained(folder)
            config = json.loads((folder / "config.json").read_text())
            del config["architectures"]
            (folder / "config.json").write_text(json.dumps(config))
            if layout == "in-memory":
                for old in folder.glob("*.safetensors"):
                    old.unlink()
                state = {k: v.contiguous() for k, v in reference.state_dict().items()}
                save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
            model = dpt_mlx.load_model(folder)
            assert type(model).__name__ == cls.__name__, (layout, type(model).__name__)
