"""processor_class_for: the image processor class a checkpoint's files name."""

import json

import pytest
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
from transformers.models.prompt_depth_anything.image_processing_pil_prompt_depth_anything import (
    PromptDepthAnythingImageProcessorPil,
)
from transformers.models.zoedepth.image_processing_pil_zoedepth import ZoeDepthImageProcessorPil

from dpt_mlx import PromptDepthAnythingImageProcessor, ZoeDepthImageProcessor
from dpt_mlx.errors import UnsupportedModelError
from dpt_mlx.processing.auto import processor_class_for
from dpt_mlx.processing.image_processor import DPTImageProcessor

PAIRS = [
    (DPTImageProcessorPil, DPTImageProcessor),
    (ZoeDepthImageProcessorPil, ZoeDepthImageProcessor),
    (PromptDepthAnythingImageProcessorPil, PromptDepthAnythingImageProcessor),
]


@pytest.mark.parity
@pytest.mark.parametrize("reference, ours", PAIRS)
def test_files_saved_by_transformers_and_by_us(tmp_path, reference, ours):
    reference().save_pretrained(tmp_path / "theirs")
    ours().save_pretrained(tmp_path / "ours")
    for name in ("theirs", "ours"):
        config = json.loads((tmp_path / name / "preprocessor_config.json").read_text())
        assert processor_class_for(config) is ours
        assert processor_class_for(config, model_type="dpt") is ours  # the file wins over the model type
        loaded = processor_class_for(config).from_pretrained(tmp_path / name)
        assert type(loaded) is ours and loaded.to_dict() == ours().to_dict()


@pytest.mark.parametrize(
    "config, model_type, expected",
    [
        ({"image_processor_type": "DPTImageProcessorFast"}, None, DPTImageProcessor),
        ({"image_processor_type": "DPTImageProcessorPil"}, None, DPTImageProcessor),
        ({"feature_extractor_type": "DPTFeatureExtractor", "size": 384}, None, DPTImageProcessor),
        ({"image_processor_type": "ZoeDepthImageProcessorFast"}, None, ZoeDepthImageProcessor),
        ({"image_processor_type": "PromptDepthAnythingImageProcessorPil"}, None, PromptDepthAnythingImageProcessor),
        ({"size": 384}, "zoedepth", ZoeDepthImageProcessor),
        (None, "prompt_depth_anything", PromptDepthAnythingImageProcessor),
        (None, "depth_anything", DPTImageProcessor),
        ({}, "dpt", DPTImageProcessor),
        (None, None, DPTImageProcessor),
    ],
)
def test_names_and_model_types(config, model_type, expected):
    assert processor_class_for(config, model_type) is expected


@pytest.mark.parametrize(
    "config, model_type, words",
    [
        ({"image_processor_type": "BeitImageProcessor"}, "dpt", "'BeitImageProcessor' is not supported"),
        ({"image_processor_type": "FastPil"}, None, "'FastPil' is not supported"),
        ({"image_processor_type": 3}, None, "image_processor_type"),
        (None, "glpn", "model_type 'glpn'"),
    ],
)
def test_unsupported(config, model_type, words):
    with pytest.raises(UnsupportedModelError, match=words) as info:
        processor_class_for(config, model_type)
    assert "\n" not in str(info.value)
