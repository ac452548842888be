"""Point MLX's CPU matrix products at an optimized BLAS (Linux only).

The ``mlx[cpu]`` wheel for Linux links the netlib *reference* BLAS that it bundles
(``mlx_cpu.libs/libblas-*.so.3``), and MLX's CPU matmul and convolution both go through it.
``libmlx.so`` calls ``cblas_sgemm`` / ``dgemm`` / ``cgemm`` through PLT slots that are bound when
``mlx.core`` is imported; :func:`setup` loads an optimized BLAS (:mod:`.providers` finds one)
and writes the addresses of its gemm routines into those slots of libmlx alone (:mod:`.elf`),
after checking that each slot points at a ``cblas_?gemm``. Nothing is exported into the
process's global symbol scope, so NumPy, SciPy and PyTorch keep their own BLAS. An unprefixed
library loaded before ``mlx.core`` is also preloaded with ``RTLD_GLOBAL`` (which covers MLX's
LAPACK calls too). On macOS MLX uses Accelerate and this module does nothing.

``DPT_MLX_BLAS`` chooses the source: ``auto`` (default: the ``scipy-openblas32`` wheel, then
MKL's pip wheel, then a system OpenBLAS / MKL, then SciPy's bundled OpenBLAS; a BLAS already
interposed with ``LD_PRELOAD`` is left alone), ``off``, ``openblas``, ``mkl``, ``system``,
``scipy``, or a path to a ``.so`` (``cblas_sgemm`` or ``scipy_cblas_sgemm``, LP64 only).
``DPT_MLX_BLAS_THREADS`` sets its threads (default: the CPUs this process may use; a value above
the library's maximum is capped, and :func:`blas_info`'s notes say so);
``DPT_MLX_OPENBLAS_CORETYPE`` pins the kernels of dpt_mlx's own OpenBLAS, which otherwise detects
the CPU even when ``OPENBLAS_CORETYPE`` is set for the process's other OpenBLAS copies.

:func:`setup` runs on the first model load on the CPU (never on ``import dpt_mlx``) and never
raises: a failure leaves MLX as it was and is reported by :func:`blas_info`, which reads the slot
back and so reports the BLAS MLX really calls.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
import warnings

from .elf import dladdr, find_libmlx, read_pointer, slots as gemm_slots, symbol_address, write_pointer
from .providers import (ENV_VAR, PROBE_SYMBOL, THREADS_ENV_VAR, candidates, is_reference, open_provider,
                        set_threads as _apply_threads)

__all__ = ["blas_info", "set_threads", "setup"]


# The gemm entry points libmlx imports; only these are rebound (LAPACK is not on
# any DPT code path and is left to the RTLD_GLOBAL preload where that applies).
_GEMM_SYMBOLS = ("cblas_sgemm", "cblas_dgemm", "cblas_cgemm")

_lock = threading.RLock()
_state: dict | None = None
_keepalive: list = []  # provider handles must outlive the process's use of them


# -------------------------------------------------------------------- public API


def _current_binding(libmlx=None):
    """Which library libmlx's cblas_sgemm slot points at, read from memory."""
    libmlx = libmlx or find_libmlx()
    if libmlx is None:
        return {"mlx_loaded": False}
    base, path = libmlx
    slots, why = gemm_slots(path, (PROBE_SYMBOL,))
    if not slots:
        return {"mlx_loaded": True, "libmlx": path, "slot": None, "reason": why
                or "libmlx.so does not import cblas_sgemm dynamically"}
    target = read_pointer(base + slots[PROBE_SYMBOL][0])
    lib, sym = dladdr(target)
    if lib == path:
        return {"mlx_loaded": True, "libmlx": path, "slot": "unresolved (lazy binding)"}
    return {"mlx_loaded": True, "libmlx": path, "slot": f"{sym} in {lib}", "library": lib,
            "symbol": sym, "reference": is_reference(lib)}


def _setup_linux(mode, info):
    notes = info["notes"]
    explicit = mode != "auto"
    mlx_before = "mlx.core" in sys.modules
    info["mlx_imported_before_setup"] = mlx_before

    if mode == "auto":
        # Honour an optimized BLAS the user set up (LD_PRELOAD, an RTLD_GLOBAL load
        # before mlx.core, or an earlier rebinding): do not replace it.
        if mlx_before:
            lib = _current_binding().get("library")
        else:
            lib, _ = dladdr(symbol_address(ctypes.CDLL(None), PROBE_SYMBOL))
        if lib and not is_reference(lib):
            importlib.import_module("mlx.core")  # binds libmlx's slots

            info.update(provider="preexisting", library=lib, method="global interposition",
                        found_by="already bound before dpt_mlx was imported (LD_PRELOAD?)")
            return

    chosen = None
    for name, path, how in candidates(mode):
        opened = open_provider(name, path, global_ok=not mlx_before, notes=notes)
        if opened is not None:
            chosen = (name, path, how) + opened
            break
    if chosen is None:
        if explicit:
            why = "; ".join(notes) or "no such library installed"
            notes[:] = [f"{ENV_VAR}={mode!r}: no usable BLAS ({why}); MLX keeps its reference BLAS"]
            _warn_one_line(f"{ENV_VAR}={mode!r} is not a usable BLAS, MLX keeps its reference BLAS "
                           "(dpt_mlx.blas_info()['notes'] says why)")
        else:
            notes.append("no optimized BLAS found; `pip install scipy-openblas32` or "
                         "`apt install libopenblas0-pthread`")
        return
    name, path, how, handle, prefix, version = chosen
    _keepalive.append(handle)
    library = dladdr(symbol_address(handle, prefix + PROBE_SYMBOL))[0] or path
    info.update(provider=name, library=library, found_by=how, version=version,
                symbol_prefix=prefix)
    global_preload = prefix == "" and not mlx_before
    if global_preload:
        info["method"] = "RTLD_GLOBAL preload"  # upgraded below once the slots are rebound
    info["threads"] = _apply_threads(handle, prefix, notes)

    importlib.import_module("mlx.core")  # loads libmlx.so, binding its slots (RTLD_NOW)

    libmlx = find_libmlx()
    if libmlx is None:
        notes.append("libmlx.so is not loaded after `import mlx.core`; nothing rebound")
        return
    base, mlx_path = libmlx
    slots, why = gemm_slots(mlx_path, _GEMM_SYMBOLS)
    if not slots:
        notes.append(why or "libmlx.so does not import cblas_*gemm dynamically; nothing to do")
        info["method"] = "global interposition" if global_preload else None
        return

    # Plan every write, checking that each slot holds a cblas_?gemm, then write.
    plan = []
    for sym, offsets in slots.items():
        target = symbol_address(handle, prefix + sym)
        if target is None:
            raise RuntimeError(f"{path} lacks {prefix + sym}")
        for off in offsets:
            current = read_pointer(base + off)
            cur_lib, cur_sym = dladdr(current)
            if cur_lib != mlx_path and sym.split("_", 1)[1] not in (cur_sym or "").lower():
                raise RuntimeError(f"libmlx slot for {sym} points at {cur_sym} in {cur_lib}; "
                                   "refusing to patch")
            plan.append((base + off, target))
    for addr, target in plan:
        write_pointer(addr, target)
    for addr, target in plan:
        if read_pointer(addr) != target:
            raise RuntimeError("PLT slot write did not stick")
    info["method"] = "RTLD_GLOBAL preload + PLT rebind" if global_preload else "PLT rebind"
    info["rebound_symbols"] = sorted(slots)
    if mlx_before and prefix == "":
        notes.append("mlx.core was imported before dpt_mlx: a global preload would have been "
                     "too late (slots bound at import); rebinding the PLT slots fixed gemm, "
                     "MLX's LAPACK calls stay on the reference library")


def _warn_one_line(message: str) -> None:
    """A RuntimeWarning printed as one line: attributed to no source line, so that Python does not
    print one under it (which line of the caller would not help); filters can match the module."""
    warnings.warn_explicit(message, RuntimeWarning, "dpt_mlx", 0, module="dpt_mlx.cpu.blas")


def _mode() -> str:
    """The ``DPT_MLX_BLAS`` setting, normalised."""
    mode = os.environ.get(ENV_VAR, "auto").strip() or "auto"
    low = mode.lower()
    if low in ("auto", "on", "1", "true", "yes"):
        return "auto"
    if low in ("off", "0", "false", "no", "none", "reference"):
        return "off"
    if low in ("openblas", "scipy-openblas32", "mkl", "system", "scipy"):
        return "openblas" if low == "scipy-openblas32" else low
    return mode


def _blank_info(mode: str) -> dict:
    return {"platform": sys.platform, "mode": mode, "provider": None, "library": None, "found_by": None,
            "version": None, "method": None, "threads": None, "set_up": False,
            "mlx_imported_before_setup": "mlx.core" in sys.modules, "notes": []}


def setup() -> dict:
    """Select an optimized BLAS for MLX (Linux only). Idempotent; never raises.

    dpt_mlx calls it on the first model load on the CPU (dpt_mlx.cpu.accelerate), never on import.
    """
    global _state
    with _lock:
        if _state is not None:
            return dict(_state)
        mode = _mode()
        info = _blank_info(mode)
        info["set_up"] = True
        try:
            if not sys.platform.startswith("linux"):
                info["notes"].append("not Linux: MLX uses Accelerate/Metal, nothing to do")
            elif mode == "off":
                info["notes"].append(f"{ENV_VAR}=off: MLX keeps the BLAS it links")
            else:
                _setup_linux(mode, info)
        except Exception as exc:  # noqa: BLE001  (never break `import dpt_mlx`)
            if info.get("method") == "RTLD_GLOBAL preload":
                # mlx.core was imported after the global preload, so it binds to it anyway
                info["notes"].append(f"PLT rebind skipped: {type(exc).__name__}: {exc}")
            else:
                info["notes"].append(
                    f"setup failed, MLX left as it was: {type(exc).__name__}: {exc}")
                info.update(provider=None, library=None, method=None)
        _state = info
        return dict(info)


def set_threads(n: int) -> int | None:
    """Use ``n`` threads in the BLAS that MLX calls: sets ``DPT_MLX_BLAS_THREADS``, which :func:`setup`
    applies on the first model load, and applies it now if dpt_mlx's BLAS is loaded already.

    Returns the BLAS's thread count now, or None before :func:`setup` (or for a BLAS dpt_mlx did not load).
    """
    os.environ[THREADS_ENV_VAR] = str(int(n))
    with _lock:
        if _state is None or not _keepalive or _state.get("symbol_prefix") is None:
            return None
        _state["threads"] = _apply_threads(_keepalive[-1], _state["symbol_prefix"], _state["notes"])
        return _state["threads"]


def blas_info() -> dict:
    """What BLAS MLX's CPU backend uses, and how it was chosen.

    Keys: ``provider`` (``scipy-openblas32``, ``mkl``, ``system-openblas``, ...,
    or None), ``library`` (path), ``found_by``, ``version``, ``method`` (``PLT
    rebind``, ``RTLD_GLOBAL preload + PLT rebind``, ``global interposition`` or
    None), ``threads``, ``mlx_imported_before_setup``, ``mode`` (the
    ``DPT_MLX_BLAS`` setting), ``set_up`` (whether :func:`setup` has run; it changes nothing
    here), ``notes``, and ``mlx_cblas_sgemm``: where libmlx's ``cblas_sgemm`` call really goes,
    read from memory now, with ``effective`` (True when that is not a reference BLAS).
    """
    with _lock:
        info = dict(_state) if _state is not None else _blank_info(_mode())
    info["notes"] = list(info["notes"])
    if not info["set_up"]:
        info["notes"].append("MLX keeps the BLAS it ships with until a model is loaded on the CPU "
                             "(or dpt_mlx.cpu.blas.setup() is called)")
    if sys.platform.startswith("linux"):
        try:
            if "mlx.core" not in sys.modules:
                importlib.import_module("mlx.core")
            binding = _current_binding()
            info["mlx_cblas_sgemm"] = binding.get("slot")
            info["effective"] = (binding.get("reference") is False) if "reference" in binding else None
            if binding.get("reason"):
                info["notes"].append(binding["reason"])
        except Exception as exc:  # noqa: BLE001
            info["mlx_cblas_sgemm"] = None
            info["effective"] = None
            info["notes"].append(f"could not inspect libmlx: {type(exc).__name__}: {exc}")
    else:
        info["mlx_cblas_sgemm"] = None
        info["effective"] = None
    return info
