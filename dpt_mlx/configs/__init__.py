"""Model configs: dataclasses with transformers' field names and defaults.

``base`` (what every config shares; the backbones' configs build on it too), ``dpt`` (DPT, Depth
Anything, Prompt Depth Anything), ``zoedepth``, ``depth_pro``, and ``load`` (which class a ``config.json`` names).
This file imports none of them, so that a backbone may import ``base`` without a cycle.
"""
