"""Model configs: dataclasses with transformers' field names and defaults.

``base`` (what every config shares; the backbones' configs build on it too), ``dpt`` (DPT, Depth
Anything, Prompt Depth Anything), ``zoedepth``, ``depth_pro``, ``chmv2``, ``tipsv2_dpt``, and ``load``
(which class a ``config.json`` names).
This file imports none of them, so that a backbone may import ``base`` without a cycle; it holds
:func:`predicts_metres` and :func:`camera_depth`, which read any of them.
"""


def predicts_metres(config, prompted: bool = False) -> bool:
    """Whether a depth model's output is in metres: metric Depth Anything, ZoeDepth, Depth Pro and CHMv2
    (canopy height) always (their configs' ``predicts_metres``), Prompt Depth Anything when it was given
    a prompt (its output is scaled to the prompt's range)."""
    if getattr(config, "model_type", None) == "prompt_depth_anything":
        return prompted or getattr(config, "depth_estimation_type", None) == "metric"
    return bool(getattr(config, "predicts_metres", False)) or getattr(config, "depth_estimation_type", None) == "metric"


def camera_depth(config) -> bool:
    """Whether a depth model's values are distances from the camera that took the photo, which point
    clouds, meshes and measurements back-project: not CHMv2's canopy heights, seen from above."""
    return getattr(config, "model_type", None) != "chmv2"
