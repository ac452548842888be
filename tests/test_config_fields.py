"""A malformed config.json is one CheckpointError naming the field and its value, at load time.

Every size or count field of every config class (the classes' ``POSITIVE`` sets), every list field,
and configs that are not JSON objects, fed to ``dpt_mlx.load_model`` and to the command lines.
"""

from __future__ import annotations

import json
import math
import shutil
import typing

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import dpt_mlx
from dpt_mlx.backbones.beit import BeitConfig
from dpt_mlx.backbones.bit import BitConfig
from dpt_mlx.backbones.dinov2 import Dinov2Config
from dpt_mlx.backbones.swinv2 import Swinv2Config
from dpt_mlx.configs.depth_pro import DepthProConfig
from dpt_mlx.configs.dpt import DepthAnythingConfig, DPTConfig
from dpt_mlx.errors import CheckpointError
from dpt_mlx.io.convert import probe_size

# Valid tiny configs, shaped like the hub's, one per family; "backbone" says where a backbone's fields live.
DPT = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    image_size=32,
    patch_size=8,
    backbone_out_indices=[0, 1, 2, 3],
    neck_hidden_sizes=[8, 16, 24, 32],
    fusion_hidden_size=16,
)
NECK = dict(neck_hidden_sizes=[8, 16, 24, 32], fusion_hidden_size=16)
FAMILIES = {
    "dpt": (DPTConfig, lambda: transformers.DPTConfig(**DPT, num_labels=3)),
    "hybrid": (
        BitConfig,
        lambda: transformers.DPTConfig(
            is_hybrid=True,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=64,
            patch_size=16,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[16, 32, 32, 32],
            reassemble_factors=[1, 1, 1, 0.5],
            fusion_hidden_size=16,
            backbone_featmap_shape=[1, 64, 4, 4],
            backbone_config=dict(
                model_type="bit",
                layer_type="bottleneck",
                global_padding="same",
                embedding_dynamic_padding=True,
                depths=[1, 1, 2],
                embedding_size=8,
                hidden_sizes=[16, 32, 64],
                num_groups=4,
                out_features=["stage1", "stage2", "stage3"],
            ),
        ),
    ),
    "dinov2": (
        Dinov2Config,
        lambda: transformers.DPTConfig(
            **NECK,
            backbone_config=transformers.Dinov2Config(
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
                out_indices=[1, 2, 3, 4],
                reshape_hidden_states=False,
            ),
        ),
    ),
    "beit": (
        BeitConfig,
        lambda: transformers.DPTConfig(
            **NECK,
            backbone_config=dict(
                model_type="beit",
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=48,
                image_size=32,
                patch_size=8,
                use_relative_position_bias=True,
                reshape_hidden_states=False,
                out_indices=[1, 2, 3, 4],
            ),
        ),
    ),
    "swinv2": (
        Swinv2Config,
        lambda: transformers.DPTConfig(
            neck_hidden_sizes=[16, 32, 64, 128],
            fusion_hidden_size=16,
            backbone_config=dict(
                model_type="swinv2",
                image_size=64,
                patch_size=4,
                embed_dim=16,
                depths=[2, 2, 2, 2],
                num_heads=[1, 2, 2, 4],
                window_size=4,
                out_features=["stage1", "stage2", "stage3", "stage4"],
            ),
        ),
    ),
    "depth_anything": (
        DepthAnythingConfig,
        lambda: transformers.DepthAnythingConfig(
            backbone_config=transformers.Dinov2Config(
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                image_size=28,
                patch_size=14,
                out_indices=[1, 2, 3, 4],
                reshape_hidden_states=False,
            ),
            reassemble_hidden_size=64,
            **NECK,
            head_hidden_size=16,
        ),
    ),
    "depth_pro": (
        DepthProConfig,
        lambda: transformers.DepthProConfig(
            patch_size=32,
            fusion_hidden_size=16,
            intermediate_hook_ids=[1],
            intermediate_feature_dims=[8],
            scaled_images_ratios=[0.5, 1],
            scaled_images_overlap_ratios=[0.0, 0.5],
            scaled_images_feature_dims=[16, 8],
            use_fov_model=True,
            **{
                name: dict(
                    model_type="dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8
                )
                for name in ("image_model_config", "patch_model_config", "fov_model_config")
            },
        ),
    ),
}
MODEL = {
    "depth_anything": transformers.DepthAnythingForDepthEstimation,
    "depth_pro": transformers.DepthProForDepthEstimation,
}


def base(family: str) -> dict:
    return json.loads(FAMILIES[family][1]().to_json_string())


def nullable(cls, name: str) -> bool:
    hint = typing.get_type_hints(cls)[name]
    return type(None) in typing.get_args(hint) or name in getattr(cls, "NULL_DEFAULTS", {})


def bad_values(cls, name: str) -> list:
    """Values a size or count field must refuse: not positive, bool, a string, not an int, not finite, null."""
    is_float = typing.get_type_hints(cls)[name] in (float, float | None)
    values = [0, -1, True, "64"] + ([math.nan, math.inf] if is_float else [1e12, 2**31])
    if name == "pooler_output_size":
        values.remove(0)  # transformers: ``pooler_output_size or hidden_size``
    return values + ([] if nullable(cls, name) else [None])


def list_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [n for n, h in hints.items() if list in (typing.get_origin(a) for a in (h, *typing.get_args(h)))]


def cases():
    """(family, field, value): the family's config with ``field`` (``backbone_config.x``: in there) set to value."""
    out = []
    for family, (cls, _) in FAMILIES.items():
        where = "" if cls in (DPTConfig, DepthAnythingConfig, DepthProConfig) else "backbone_config."
        for name in sorted(cls.POSITIVE):
            out += [(family, where + name, v) for v in bad_values(cls, name)]
        out += [(family, where + name, "1, 2") for name in list_fields(cls)]
    out += [
        ("dpt", "id2label", ["a", "b"]),
        ("dpt", "id2label", {"a": "cat"}),
        ("dpt", "backbone_config", "bit"),
        ("dpt", "hidden_act", 3),
        ("dpt", "readout_type", None),
        ("dpt", "reassemble_factors", [4, 2, 1, 1e-320]),
        ("dpt", "image_size", [32, 32, 3]),
        ("dpt", "num_labels", 1e12),
        ("dpt", "qkv_bias", "yes"),
        ("dpt", "num_attention_heads", 5),
        ("dinov2", "backbone_config.out_indices", [1, 2, 3, 40]),
        ("beit", "backbone_config.out_indices", [1, 2]),
        ("swinv2", "backbone_config.num_heads", [1, 2, 4]),
        ("hybrid", "backbone_config.global_padding", 1),
        ("depth_anything", "backbone_config.out_indices", [1, 30]),
        ("depth_anything", "backbone_config.hidden_size", 32),
        ("depth_anything", "max_depth", "20"),
        ("depth_pro", "patch_model_config.num_attention_heads", 3),
        ("depth_pro", "fov_model_config.hidden_act", "gelu2"),
        ("depth_pro", "image_model_config", "dinov2"),
        ("depth_pro", "scaled_images_overlap_ratios", [0.0, 1.5]),
        ("depth_pro", "intermediate_hook_ids", [2]),
    ]
    return out


def set_field(family: str, name: str, value) -> dict:
    config = base(family)
    *parents, name = name.split(".")
    target = config[parents[0]] if parents else config
    if name == "num_labels":  # a count without the labels
        del config["id2label"], config["label2id"]
    target[name] = value
    return config


def write(directory, config) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_base_configs_are_valid(tmp_path, family):
    """The configs the other cases break are good ones: the checkpoints load and run."""
    torch.manual_seed(0)
    ref = MODEL.get(family, transformers.DPTForDepthEstimation)(FAMILIES[family][1]())
    ref.save_pretrained(tmp_path)
    model = dpt_mlx.load_model(tmp_path)
    h, w = probe_size(model.config)
    assert model(np.zeros((1, 3, h, w), dtype=np.float32)).predicted_depth.shape[0] == 1


@pytest.mark.parametrize("family, name, value", cases(), ids=lambda v: repr(v)[:24])
def test_malformed_field_is_named(tmp_path, family, name, value):
    directory = write(tmp_path / "ckpt", set_field(family, name, value))
    with pytest.raises(CheckpointError) as info:
        dpt_mlx.load_model(directory)
    message = str(info.value)
    assert name.split(".")[-1] in message and "\n" not in message, message
    assert type(info.value).__name__ in ("CheckpointError", "UnsupportedModelError")


def test_message_names_field_and_value(tmp_path):
    directory = write(tmp_path / "ckpt", set_field("dpt", "hidden_size", True))
    with pytest.raises(
        CheckpointError, match=r"config\.json: hidden_size=True is invalid: expected a positive integer$"
    ):
        dpt_mlx.load_model(directory)
    directory = write(tmp_path / "b", set_field("dinov2", "backbone_config.num_attention_heads", 0))
    with pytest.raises(CheckpointError, match=r"backbone_config: num_attention_heads=0 is invalid"):
        dpt_mlx.load_model(directory)


@pytest.mark.parametrize("data, kind", [([], "list"), (None, "null"), (3, "int"), ("dpt", "str")])
def test_config_that_is_not_an_object(tmp_path, data, kind):
    directory = write(tmp_path / "ckpt", data)
    with pytest.raises(CheckpointError, match=rf"config\.json: expected a JSON object, got {kind}$"):
        dpt_mlx.load_model(directory)


CLI_CASES = [
    ("dpt", "hidden_size", True),
    ("dpt", "num_attention_heads", 0),
    ("dpt", "patch_size", 0),
    ("dpt", "neck_hidden_sizes", "8, 16"),
    ("depth_anything", "backbone_config.out_indices", [1, 2, 30]),
    ("beit", "backbone_config.hidden_size", "64"),
    (None, None, []),
]


def cli_checkpoint(tmp_path, family, name, value):
    if family is None:
        return write(tmp_path / "ckpt", value), "JSON object"
    return write(tmp_path / "ckpt", set_field(family, name, value)), name.split(".")[-1]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("family, name, value", CLI_CASES, ids=lambda v: repr(v)[:24])
def test_predict_cli_reports_the_field(tmp_path, capsys, family, name, value):
    from dpt_mlx.cli.predict import main

    directory, word = cli_checkpoint(tmp_path, family, name, value)
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    assert main(["--model", directory, "--image", str(image)]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and word in error_lines(err)[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("family, name, value", CLI_CASES, ids=lambda v: repr(v)[:24])
def test_convert_cli_reports_the_field(tmp_path, capsys, family, name, value):
    from dpt_mlx.cli.convert import main

    directory, word = cli_checkpoint(tmp_path, family, name, value)
    assert main(["--hf-path", directory, "--mlx-path", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and word in error_lines(err)[0], err
    assert not (tmp_path / "out").exists()
    shutil.rmtree(directory)
