"""What the mesh, EXR and app tests share: tiny checkpoints (metric and relative Depth Anything, a
3-class segmentation DPT) saved with transformers, and a small photo; no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from helpers import TINY_DPT, perturb
from model_configs import depth_anything_config
from PIL import Image

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "images" / "coffee.jpg"


def checkpoints_3d(root: Path, photo_size: tuple[int, int] = (45, 31)) -> dict[str, Path]:
    """ "metric", "relative" (Depth Anything), "seg" (DPT, 3 classes) checkpoints and "photo" (the sample
    photo at ``photo_size``) under ``root``: name -> path. The same weights every time."""
    out = {}
    for kind in ("metric", "relative"):
        torch.manual_seed(0)
        config = depth_anything_config([3, 6, 9, 12], depth_estimation_type=kind, max_depth=20)
        model = perturb(transformers.DepthAnythingForDepthEstimation(config), seed=4)
        if kind == "relative":
            with torch.no_grad():
                model.head.conv3.bias.fill_(1.0)
        model.save_pretrained(str(root / kind))
        out[kind] = root / kind
    torch.manual_seed(0)
    # strongly perturbed, so that its three classes each cover part of the photo
    seg = perturb(transformers.DPTForSemanticSegmentation(transformers.DPTConfig(**TINY_DPT, num_labels=3)), 5, 1.0)
    seg.config.id2label = {0: "wall", 1: "cup", 2: "table"}
    seg.config.label2id = {v: k for k, v in seg.config.id2label.items()}
    seg.save_pretrained(str(root / "seg"))
    transformers.DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(str(root / "seg"))
    out["seg"] = root / "seg"
    photo = root / "photo.jpg"
    Image.open(PHOTO).convert("RGB").resize(photo_size, Image.LANCZOS).save(photo, quality=95)
    out["photo"] = photo
    return out


def glb_mesh(path):
    """The one mesh of a GLB file that dpt_mlx wrote, loaded with trimesh, and the file's glTF JSON."""
    import json
    import struct

    import trimesh

    data = Path(path).read_bytes()
    assert data[:4] == b"glTF", "not a binary glTF file"
    length = struct.unpack("<I", data[12:16])[0]
    tree = json.loads(data[20 : 20 + length])
    scene = trimesh.load(str(path), file_type="glb", force="scene")
    meshes = list(scene.geometry.values())
    assert len(meshes) == 1, f"expected one mesh, got {len(meshes)}"
    return meshes[0], tree


def pixel_of(vertices: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """The (rows, cols) of the pixels whose centres glTF-axes ``vertices`` were back-projected from."""
    z = -vertices[:, 2].astype(np.float64)
    cols = vertices[:, 0] * fx / z + cx - 0.5
    rows = -vertices[:, 1] * fy / z + cy - 0.5
    return rows, cols
