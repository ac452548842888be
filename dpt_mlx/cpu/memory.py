"""MLX's CPU buffer cache, sized to what one more forward pass needs.

MLX's CPU allocator keeps 32 MiB of freed buffers and hands one back only to a request of nearly
its size. A forward pass allocates the same sizes every time it runs on the same input size, so
cached buffers let the next pass reuse memory instead of faulting fresh pages in. Measured on
DPT-BEiT-large at 512x512 (2-core Xeon): MLX's 32 MiB, 7.13 s a pass; half the working set,
6.51 s; the working set (about 500 MiB there), 5.91 s; 2 GiB, 5.79 s with 470 MiB more resident
than the working set's. The model's neck (a CPU layer, see
:func:`dpt_mlx.cpu.layers.with_cache_policy`) calls :func:`before_pass` once a pass.
"""

from __future__ import annotations

import mlx.core as mx

MLX_CACHE_DEFAULT = 32 << 20  # MLX's CPU allocator keeps this much freed memory unless told otherwise
WORKING_SET_SHARE = 1.0  # of a pass's working set, the most MLX's buffer cache keeps
_cache = {"limit": MLX_CACHE_DEFAULT}  # the limit this policy set last


def max_cache_limit() -> int:
    """The most the policy asks: an eighth of MLX's memory limit, at most 2 GiB."""
    return max(MLX_CACHE_DEFAULT, min(mx.get_memory_limit() // 8, 2 << 30))


def before_pass() -> None:
    """Let MLX's CPU allocator keep the largest working set of a pass seen so far (MLX's peak memory
    since the model was loaded minus what stays allocated), so the next pass reuses those buffers
    instead of faulting fresh pages in. The model's neck calls it once a pass; a limit the user set
    is kept, and ``mx.clear_cache()`` returns the cached memory at any time."""
    working = mx.get_peak_memory() - mx.get_active_memory()
    limit = min(max(int(working * WORKING_SET_SHARE), MLX_CACHE_DEFAULT), max_cache_limit())
    if limit <= _cache["limit"]:
        return
    previous = mx.set_cache_limit(limit)
    if previous not in (MLX_CACHE_DEFAULT, _cache["limit"]):
        mx.set_cache_limit(previous)  # the user's own
    else:
        _cache["limit"] = limit
