import json

import pytest
import transformers

from dpt_mlx import DPTConfig
from dpt_mlx.configs.load import load_config
from dpt_mlx.errors import CheckpointError, UnsupportedModelError


def test_defaults_match_reference():
    ours, ref = DPTConfig(), transformers.DPTConfig()
    for name in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "image_size",
        "patch_size",
        "num_channels",
        "is_hybrid",
        "qkv_bias",
        "readout_type",
        "fusion_hidden_size",
        "head_in_index",
        "use_batch_norm_in_fusion_residual",
        "use_bias_in_fusion_residual",
        "add_projection",
        "use_auxiliary_head",
        "auxiliary_loss_weight",
        "semantic_loss_ignore_index",
        "semantic_classifier_dropout",
        "pooler_output_size",
        "pooler_act",
        "neck_ignore_stages",
        "backbone_featmap_shape",
    ):
        ref_value = getattr(ref, name)
        ref_value = list(ref_value) if isinstance(ref_value, tuple) else ref_value
        assert getattr(ours, name) == ref_value, name
    for name in ("backbone_out_indices", "reassemble_factors", "neck_hidden_sizes"):
        assert list(getattr(ours, name)) == list(getattr(ref, name)), name


def test_from_reference_json_roundtrip(tmp_path):
    ref = transformers.DPTConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_hidden_layers=24,
        backbone_out_indices=[5, 11, 17, 23],
        readout_type="add",
        neck_hidden_sizes=[8, 16, 32, 32],
        num_labels=3,
    )
    ref.save_pretrained(tmp_path)
    ours = load_config(tmp_path / "config.json")
    assert ours.hidden_size == 64 and ours.readout_type == "add"
    assert ours.backbone_out_indices == [5, 11, 17, 23]
    assert ours.num_labels == 3 and ours.id2label[2] == "LABEL_2"
    again = DPTConfig.from_dict(json.loads(json.dumps(ours.to_dict())))
    assert again == ours


def test_unknown_keys_ignored():
    cfg = DPTConfig.from_dict(
        {"hidden_size": 96, "num_attention_heads": 12, "some_future_key": 1, "torch_dtype": "float32"}
    )
    assert cfg.hidden_size == 96


@pytest.mark.parametrize(
    "bad, word",
    [
        ({"readout_type": "concat"}, "readout_type"),
        ({"reassemble_factors": [4, 2, 1]}, "reassemble_factors"),
        ({"backbone_out_indices": [1, 2]}, "backbone_out_indices"),
        ({"backbone_out_indices": [1, 2, 3, 40]}, "out of range"),
        ({"hidden_size": 100}, "num_attention_heads"),
        ({"hidden_act": "swoosh"}, "hidden_act"),
        ({"reassemble_factors": [3.5, 2, 1, 0.5]}, "reassemble factor"),
        ({"is_hybrid": True, "readout_type": "add"}, "readout_type"),
    ],
)
def test_invalid_values_named(bad, word):
    with pytest.raises(ValueError, match=word):
        DPTConfig.from_dict(bad)


def test_load_config_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"readout_type": "concat"}))
    with pytest.raises(CheckpointError, match="readout_type"):
        load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit_mae"}))
    with pytest.raises(UnsupportedModelError, match="vit_mae"):
        load_config(tmp_path / "config.json")


def test_num_labels_without_id2label():
    cfg = DPTConfig.from_dict({"num_labels": 5})
    assert cfg.num_labels == 5 and cfg.id2label[4] == "LABEL_4"
    assert DPTConfig.from_dict({"num_labels": 5, "id2label": {"0": "a", "1": "b"}}).num_labels == 2


def test_hub_nulls_stand_for_defaults(tmp_path):
    """transformers 4.x wrote the unused ViT fields of a backbone_config checkpoint as null: they load."""
    data = transformers.DPTConfig(
        backbone_config=transformers.Dinov2Config(
            hidden_size=32,
            num_attention_heads=2,
            num_hidden_layers=4,
            out_indices=[1, 2, 3, 4],
            reshape_hidden_states=False,
        ),
        neck_hidden_sizes=[8, 16, 32, 32],
    ).to_dict()
    data.update({name: None for name in DPTConfig.NULL_DEFAULTS}, pooler_output_size=None, backbone_out_indices=None)
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = load_config(tmp_path / "config.json")
    assert cfg.num_hidden_layers == 12 and cfg.pooler_output_size == cfg.hidden_size and cfg.id2label == {}


@pytest.mark.parametrize("data, kind", [([], "list"), (None, "null"), (1.5, "float")])
def test_load_config_not_an_object(tmp_path, data, kind):
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"expected a JSON object, got {kind}"):
        load_config(tmp_path / "config.json")
