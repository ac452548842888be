"""Turn depth maps and class maps into images: colormaps, palettes, 16-bit PNG, overlays.

Everything here is NumPy and Pillow; nothing depends on matplotlib.

Colormaps are 256-entry lookup tables rebuilt from 65 anchor colours (every 4th entry of
the published 256-entry tables, plus the last), linearly interpolated; every channel is
within 1/255 of the original tables. Sources: inferno, magma, viridis and plasma are the
matplotlib colormaps by Nathaniel J. Smith, Stefan van der Walt and Eric Firing (CC0);
turbo is Google's colormap by Anton Mikhailov (Apache-2.0), as matplotlib ships it.

The ADE20K palette is the 150-colour table of the MIT scene-parsing benchmark as used by
mmsegmentation and the transformers documentation; other label sets get the deterministic
PASCAL VOC bit-interleaving palette.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..io.files import atomic_write

# Anchor colours as "rrggbb" hex, 65 per map: entries 0, 4, ..., 252 and 255 of the 256-entry table.
_ANCHORS = {
    "inferno": (
        "00000402010a04031207051b0b072410092d150b371b0c41210c4a280b532f0a5b3609613d0965440a684a0c6b510e6c"
        "57106e5d126e64156e6a176e71196e771c6d7d1e6d84206b8a226a9025689727669d2964a32c61a92e5eb0315bb63458"
        "bc3754c13a50c73e4ccc4248d24644d74b3fdb503be05536e45a31e8602deb6628ef6c23f1731df47918f68013f8870e"
        "f98e09fb9606fb9d07fca50afcac11fcb418fbbc21fac42af9cb35f7d340f5db4cf3e35af2ea69f1f179f3f68af8fb9a"
        "fcffa4"
    ),
    "magma": (
        "00000402010903031206051a0a08220e0b2b130d34180f3d1d114722115029115a2f116336106b3d0f71440f764a1079"
        "51127c57157e5d177f641a806a1c81701f817621817c2382832681892881902a81962c809c2e7fa3307eaa337db0357b"
        "b73779bd3977c43c75ca3e72d0416fd6456cdc4869e24d66e75263eb5760ef5d5ef2645cf56b5cf7725cf9795dfa815f"
        "fc8961fc9065fd9869fe9f6dfea772feae77feb67cfebd82fec488fecc8ffed395fdda9cfde2a3fde9aafcf0b2fcf7b9"
        "fcfdbf"
    ),
    "viridis": (
        "44015446075a470d6047136548186a481d6f482374482878472d7b46327e453781443b844240864045883e49893d4e8a"
        "3b528b39568c375b8d355f8d33638d31678e2f6b8e2e6f8e2c728e2a768e297a8e277e8e26828e25858e23898e228d8d"
        "21918c1f948c1f988b1e9c891fa08820a38622a78525ab8228ae802db27d32b67a38b9773fbc7346c06f4ec36b56c667"
        "5ec96267cc5c70cf577ad15184d44b8ed64598d83ea2da37addc30b8de29c2df23cde11dd8e219e2e418ece51bf6e620"
        "fde725"
    ),
    "plasma": (
        "0d088719068c2206902a059331059738049a3f049c46039f4c02a15302a35901a56001a66600a76c00a87201a87801a8"
        "7e03a88405a78a09a58f0da49511a19a169fa01a9ca51f99aa2395ae2892b32c8eb7318abc3587c03a83c43e7fc8437b"
        "cc4778cf4c74d35171d6556dda5a6add5e66e06363e3685fe66c5ce97158eb7655ee7b51f0804ef3854bf58b47f79044"
        "f89540fa9b3dfba139fca636fdac33fdb22ffeb82cfebe2afdc527fdcb26fcd225fad824f8df25f6e626f4ed27f1f426"
        "f0f921"
    ),
    "turbo": (
        "30123b351e58392a733d358b4040a2424bb54456c74661d6466be34776ee4680f6458afc4294ff3d9efe37a8fa2fb2f4"
        "28bceb22c5e21ccdd819d5cd18ddc219e3b91fe9af27eea432f2983ff68a4ef97d5dfc6f6dfe627dff568bff4b99fe42"
        "a4fc3caffa37b9f635c3f134cdec34d7e535dfdf37e7d739eecf3af4c73af8be39fbb637fdac34fea130fe962bfd8a26"
        "fb7e21f8721cf46617f05b12eb500ee5470bdf3f08d83706d02f05c82803be2102b41b01a916019e1001920b01850702"
        "7a0403"
    ),
}
_ANCHOR_POSITIONS = np.array(list(range(0, 256, 4)) + [255], dtype=np.float64)

COLORMAPS = ("inferno", "magma", "viridis", "plasma", "turbo", "gray")

# ADE20K (SceneParse150) class colours, "rrggbb" hex in class-id order (0 = wall, ..., 149 = flag).
_ADE20K = (
    "787878b4787806e6e650323204c8037878508c8c8ccc05ffe6e6e604fa07e005ffebff0796053d78784608ff33ff0652"
    "8fff8cccff04ff3307cc46030066c83de6faff06330b66ffff0747ff09e00907e6dcdcdcff095c7009ff08ffd607ffe0"
    "ffb8060aff47ff290a07ffffe0ff086608ffff3d06ffc207ff7a0800ff14ff0829ff05990633ffeb0cffa0961400a3ff"
    "8c8c8cfa0a0f14ff001fff00ff1f00ffe00099ff000000ffff470000ebff00adff1f00ff0bc8c8ff520000fff5003dff"
    "00ff7000ff85ff0000ffa300ff6600c2ff00008fff33ff000052ff00ff2900ffad0a00ffadff0000ff99ff5c00ff00ff"
    "ff00f5ff0066ffad00ff0014ffb8b8001fff00ff3d0047ffff00cc00ffc200ff52000aff0070ff3300ff00c2ff007aff"
    "00ffa3ff990000ff0aff70008fff005200ffa3ff00ffeb0008b8aa8500ff00ff5cb800ffff001f00b8ff00d6ffff0070"
    "5cff0000e0ff70e0ff46b8a0a300ff9900ff47ff00ff00a3ffcc00ff008f00ffeb85ff00ff00ebf500ffff007afff500"
    "0abed4d6ff0000ccff1400ffffff000099ff0029ff00ffcc2900ff29ff00ad00ff00f5ff4700ff7a00ff00ffb8005cff"
    "b8ff000085ffffd60019c2c266ff005c00ff"
)


def _hex_colors(text: str) -> np.ndarray:
    """Hex text "rrggbbrrggbb..." -> (N, 3) uint8."""
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8).reshape(-1, 3)


def colormap_lut(name: str) -> np.ndarray:
    """The (256, 3) uint8 lookup table of a colormap (see :data:`COLORMAPS`)."""
    if name == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp, ramp, ramp], axis=1)
    if name not in _ANCHORS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    anchors = _hex_colors("".join(_ANCHORS[name])).astype(np.float64)
    x = np.arange(256, dtype=np.float64)
    lut = np.stack([np.interp(x, _ANCHOR_POSITIONS, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


def ade20k_palette() -> np.ndarray:
    """The (150, 3) uint8 ADE20K colours."""
    return _hex_colors("".join(_ADE20K))


def voc_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8: the PASCAL VOC colour map (bits of the class id spread over R, G and B)."""
    ids = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return palette.astype(np.uint8)


def segmentation_palette(num_labels: int) -> np.ndarray:
    """ADE20K colours for a 150-label model, else the VOC palette; (max(num_labels, 1), 3) uint8."""
    if num_labels == 150:
        return ade20k_palette()
    return voc_palette(max(num_labels, 1))


# ----------------------------------------------------------------------------------------------
# Depth


def normalize_depth(depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max normalise one map to [0, 1] (float64); a constant map becomes 0. Returns (map, min, max)."""
    depth = np.asarray(depth, dtype=np.float64)
    if not np.isfinite(depth).all():
        depth = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(depth.min()), float(depth.max())
    if high > low:
        return (depth - low) / (high - low), low, high
    return np.zeros_like(depth), low, high


def colorize_depth(depth: np.ndarray, colormap: str = "inferno") -> Image.Image:
    """(H, W) depth -> per-image min-max normalised RGB image ("L" for ``gray``); larger values brighter."""
    unit, _, _ = normalize_depth(depth)
    index = np.round(unit * 255).astype(np.uint8)
    if colormap == "gray":
        return Image.fromarray(index)
    return Image.fromarray(colormap_lut(colormap)[index])


def depth_to_uint16(depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(H, W) depth -> (uint16 map, min, max): min-max normalised to 0..65535, rounded."""
    unit, low, high = normalize_depth(depth)
    return np.round(unit * 65535).astype(np.uint16), low, high


def depth_png16(depth: np.ndarray) -> tuple[Image.Image, float, float]:
    """A 16-bit grayscale ("I;16") image of the normalised depth, and the (min, max) it maps to 0 / 65535."""
    values, low, high = depth_to_uint16(depth)
    return Image.fromarray(values), low, high


def uint16_to_depth(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Undo :func:`depth_to_uint16`: float32 depth within (high - low) / 131070 of the original."""
    return (np.asarray(values, dtype=np.float64) / 65535 * (high - low) + low).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Segmentation


def normals_image(normals: np.ndarray) -> Image.Image:
    """Unit normals (H, W, 3) as the usual RGB picture: each component from [-1, 1] to 0..255."""
    normals = np.asarray(normals)
    if normals.ndim != 3 or normals.shape[-1] != 3 or normals.size == 0:
        raise ValueError(f"a normal map must be a non-empty (height, width, 3) array, got shape {normals.shape}")
    if not np.isfinite(normals).all():
        raise ValueError("the normal map contains NaN or inf; no picture can be made from it")
    return Image.fromarray(np.round((np.clip(normals, -1, 1) + 1) * 127.5).astype(np.uint8))


def class_id_dtype(num_labels: int) -> type:
    """The integer type that class maps are stored in: uint8 for up to 256 labels, else int32."""
    return np.uint8 if num_labels <= 256 else np.int32


def class_map_image(classes: np.ndarray, num_labels: int) -> Image.Image:
    """(H, W) class ids -> a palette ("P") image whose pixel values are the ids.

    With more than 256 labels a "P" image cannot hold the ids; a 16-bit grayscale ("I;16")
    image of the ids is returned instead.
    """
    classes = np.asarray(classes)
    if num_labels > 256 or (classes.size and classes.max() > 255):
        return Image.fromarray(classes.astype(np.uint16))
    image = Image.fromarray(classes.astype(np.uint8))
    palette = np.zeros((256, 3), dtype=np.uint8)
    colors = segmentation_palette(num_labels)[:256]
    palette[: len(colors)] = colors
    image.putpalette(palette.tobytes())
    return image


def color_classes(classes: np.ndarray, num_labels: int) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours."""
    palette = segmentation_palette(num_labels)
    classes = np.asarray(classes)
    if classes.size and classes.max() >= len(palette):
        palette = np.concatenate([palette, voc_palette(int(classes.max()) + 1)[len(palette) :]])
    return palette[classes]


def class_shares(classes: np.ndarray, id2label: dict[int, str]) -> list[tuple[int, str, float]]:
    """The classes present as (id, name, share of pixels), largest share first."""
    classes = np.asarray(classes).ravel()
    counts = np.bincount(classes, minlength=1)
    present = np.flatnonzero(counts)
    rows = [(int(i), id2label.get(int(i), f"LABEL_{int(i)}"), counts[i] / classes.size) for i in present]
    return sorted(rows, key=lambda row: (-row[2], row[0]))


def overlay(photo: Image.Image, colors: np.ndarray | Image.Image, alpha: float = 0.5) -> Image.Image:
    """Blend ``colors`` ((H, W, 3) uint8 or an image of the photo's size) over the photo: RGB."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    base = np.asarray(photo.convert("RGB"), dtype=np.float32)
    if isinstance(colors, Image.Image):
        colors = colors.convert("RGB")
    top = np.asarray(colors, dtype=np.float32)
    if top.shape != base.shape:
        raise ValueError(f"overlay of shape {top.shape} does not match the photo's {base.shape}")
    return Image.fromarray(np.round(base * (1 - alpha) + top * alpha).astype(np.uint8))


# ----------------------------------------------------------------------------------------------
# Files


def png_info(text: dict[str, str] | None) -> PngInfo | None:
    if not text:
        return None
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, str(value))
    return info


def save_png(
    image: Image.Image, path: str | os.PathLike, text: dict[str, str] | None = None, overwrite: bool = True
) -> None:
    """Write a PNG atomically, with optional tEXt metadata; ``overwrite=False``: FileExistsError rather
    than replacing a file of that name (see io/files.atomic_write)."""
    info = png_info(text)
    atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info), overwrite=overwrite)


def save_npy(array: np.ndarray, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Write a .npy file atomically; ``overwrite=False`` as in :func:`save_png`."""
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False), overwrite=overwrite)
