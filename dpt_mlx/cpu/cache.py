"""MLX's CPU buffer cache, bounded to what one more forward pass needs.

MLX's CPU allocator keeps freed buffers (32 MiB of them by default) and hands one back only to a
request of nearly its size. A forward pass allocates the same sizes every time it runs on the same
input size, so cached buffers let the next pass reuse memory instead of faulting in fresh pages;
without a cache a pass takes 10-30% longer on the benchmark's models. An unbounded cache, though,
keeps two to four times the memory a pass needs (buffers that no request of the same size reuses
in time). Half of a pass's working set was measured as fast as the whole working set and much
faster than a quarter (README, "Memory"): the many mid-sized buffers that each transformer layer
frees and the next one takes again fit in it.

The policy, applied by :func:`dpt_mlx.cpu.accelerate` to every model it loads on the CPU:

- at load the limit stays MLX's default, so a first (or only) forward pass adds little more than
  its live arrays (``dpt-mlx --image x.jpg`` runs one pass);
- each later call of the model raises the limit to :data:`WORKING_SET_SHARE` of the largest
  working set seen so far: MLX's peak memory since the model was loaded minus the memory held
  between passes (weights, kept outputs), never above :func:`max_cache_limit`;
- a limit set by the user (anything but MLX's default or a limit this policy set) is left alone;
  ``mx.clear_cache()`` returns the cached memory to the system at any time.

Side effect: loading a model on the CPU resets MLX's peak-memory counter
(``mx.reset_peak_memory()``), which is what the working set is measured from.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

MLX_DEFAULT = 32 << 20  # mlx's CPU allocator keeps at most this much freed memory
WORKING_SET_SHARE = 0.5  # of a pass's working set, the most the cache keeps
_state = {"limit": MLX_DEFAULT}  # the limit this policy set last
_watched: set[type] = set()  # model classes whose call applies the policy (the original is __wrapped__)


def max_cache_limit() -> int:
    """A quarter of MLX's memory limit (which is 80% of RAM): 4.7 GiB on a 23 GiB machine."""
    return max(mx.get_memory_limit() // 4, 1 << 30)


def set_policy_limit(limit: int) -> bool:
    """Set the cache limit to ``limit`` bytes unless the user set their own; whether it was set."""
    previous = mx.set_cache_limit(limit)
    if previous not in (MLX_DEFAULT, _state["limit"]):
        mx.set_cache_limit(previous)  # the user's own setting
        return False
    _state["limit"] = limit
    return True


def before_forward() -> None:
    """Raise the cache limit to its share of the largest working set of a pass so far (called before
    each pass)."""
    working = mx.get_peak_memory() - mx.get_active_memory()
    limit = min(max(int(working * WORKING_SET_SHARE), MLX_DEFAULT), max_cache_limit())
    if limit > _state["limit"]:
        set_policy_limit(limit)


_FLAG = "_dpt_mlx_cache_policy"  # set on each model instance the policy applies to


def _watch_class(cls: type) -> None:
    """Make ``cls``'s call run :func:`before_forward` first for instances flagged with ``_FLAG``
    (once per class; other instances, and the portable path, call straight through)."""
    if cls in _watched:
        return
    original = cls.__call__

    def __call__(self, *args, **kwargs):
        if self.__dict__.get(_FLAG):
            before_forward()
        return original(self, *args, **kwargs)

    __call__.__doc__ = original.__doc__
    __call__.__wrapped__ = original
    _watched.add(cls)
    cls.__call__ = __call__


def watch(model: nn.Module) -> None:
    """Apply the policy to ``model``: its calls first update the cache limit. The model's class,
    parameters and outputs are unchanged (``type(model)`` is still the model's own class)."""
    _watch_class(type(model))
    object.__setattr__(model, _FLAG, True)
    mx.reset_peak_memory()


def is_watched(model: nn.Module) -> bool:
    return bool(model.__dict__.get(_FLAG))
