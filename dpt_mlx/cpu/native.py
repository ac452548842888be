"""The compiled CPU kernels (``dpt_mlx/cpu/_kernels``, an MLX extension built from ``csrc/``) and
the threads they use.

The extension is built by ``pip install`` on Linux when a C++ compiler is present. It is used
only when it loads and was built against the MLX that is running (its primitives are C++
subclasses of MLX's, so another MLX version could disagree on their layout); otherwise the models
run MLX's own ops and :func:`unavailable` says why in one line.

Threads: one pool inside the extension, sized to the CPUs this process may use (the affinity
mask, capped by a cgroup CPU quota), or ``DPT_MLX_THREADS``; :func:`set_threads` changes it.
The BLAS the kernels call runs single-threaded inside that pool, so no second set of threads
competes with it, and it is private to the extension, so MLX's own products keep the BLAS MLX was
installed with: Intel's MKL where the build linked it in (x86-64) and the CPU is Intel's, else the
OpenBLAS of the ``scipy-openblas32`` package (names prefixed, opened privately).
``DPT_MLX_BLAS=mkl`` or ``openblas`` overrides the choice.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import sys
import threading

THREADS_ENV_VAR = "DPT_MLX_THREADS"
BLAS_ENV_VAR = "DPT_MLX_BLAS"

_lock = threading.Lock()
_state: dict = {}


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup CPU quota (docker --cpus, Kubernetes limits), or None."""
    try:
        rel = "/"
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    rel = line[3:].strip() or "/"
        for d in (os.path.join("/sys/fs/cgroup", rel.lstrip("/")), "/sys/fs/cgroup"):
            path = os.path.join(d, "cpu.max")  # cgroup v2
            if os.path.exists(path):
                with open(path) as f:
                    quota, period = f.read().split()[:2]
                return None if quota == "max" else max(1, -(-int(quota) // int(period)))
        for d in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):  # cgroup v1
            q = os.path.join(d, "cpu.cfs_quota_us")
            if os.path.exists(q):
                with open(q) as f:
                    quota = int(f.read())
                with open(os.path.join(d, "cpu.cfs_period_us")) as f:
                    period = int(f.read())
                return None if quota <= 0 else max(1, -(-quota // period))
    except (OSError, ValueError):
        pass
    return None


def cpu_count() -> int:
    """CPUs this process can really use: the affinity mask, capped by a cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(n, limit) if limit else n


def default_threads() -> int:
    """``DPT_MLX_THREADS`` when it is a positive integer, else :func:`cpu_count`."""
    value = os.environ.get(THREADS_ENV_VAR, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return cpu_count()


def _openblas_library() -> str | None:
    """The library of the ``scipy-openblas32`` package (a dependency on Linux), or None. Found
    without importing the package, which would load the library before :func:`_load` can choose
    its kernels."""
    spec = importlib.util.find_spec("scipy_openblas32")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        paths = sorted(glob.glob(os.path.join(folder, "lib", "libscipy_openblas*.so*")))
        if paths:
            return paths[0]
    return None


def _open_openblas(module, path: str) -> str:
    """Open the kernels' OpenBLAS with the kernels for this CPU: ``OPENBLAS_CORETYPE``, which a
    machine may set for its other OpenBLAS copies, is hidden while it loads (it would pin slower
    kernels, e.g. Haswell's on an AVX-512 CPU), unless ``DPT_MLX_OPENBLAS_CORETYPE`` names a core."""
    saved = os.environ.pop("OPENBLAS_CORETYPE", None)
    ours = os.environ.get("DPT_MLX_OPENBLAS_CORETYPE")
    if ours:
        os.environ["OPENBLAS_CORETYPE"] = ours
    try:
        return module.load_blas(path)
    finally:
        os.environ.pop("OPENBLAS_CORETYPE", None)
        if saved is not None:
            os.environ["OPENBLAS_CORETYPE"] = saved


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _choose_blas(module) -> str:
    """``"mkl"`` or ``"openblas"``: ``DPT_MLX_BLAS`` when set, else MKL where it was linked in and
    the CPU is Intel's (on other CPUs its kernels are not the ones it is tuned for)."""
    wanted = os.environ.get(BLAS_ENV_VAR, "").strip().lower()
    if wanted not in ("", "mkl", "openblas"):
        raise RuntimeError(f"{BLAS_ENV_VAR} must be 'mkl' or 'openblas', got {wanted!r}")
    if wanted == "mkl" and not module.has_mkl():
        raise RuntimeError(f"{BLAS_ENV_VAR}=mkl but these kernels were built without MKL")
    if wanted:
        return wanted
    return "mkl" if module.has_mkl() and _cpu_vendor() == "GenuineIntel" else "openblas"


def _open_blas(module) -> str | None:
    """Give the kernels their BLAS; returns why not (one line), or None."""
    try:
        if _choose_blas(module) == "mkl":
            module.use_mkl()
            return None
        blas = _openblas_library()
        if blas is None:
            return "the scipy-openblas32 package is not installed; MLX's own ops run"
        _open_openblas(module, blas)
    except (RuntimeError, OSError) as exc:
        return f"{exc}; MLX's own ops run"
    return None


def _load() -> dict:
    if not sys.platform.startswith("linux"):
        return {"module": None, "why": f"no CPU kernels on {sys.platform}: MLX's own ops run (Metal on macOS)"}
    import mlx.core as mx

    try:
        module = importlib.import_module("dpt_mlx.cpu._kernels")
    except ImportError as exc:
        if "_kernels" in str(exc) and "No module named" in str(exc):
            why = (
                "the CPU kernels were not built (no C++ compiler when dpt_mlx was installed?); "
                "MLX's own ops run: reinstall with g++ present for the fast CPU path"
            )
        else:
            why = f"the CPU kernels do not load ({str(exc).splitlines()[0]}); MLX's own ops run"
        return {"module": None, "why": why}
    running = mx.__version__.split(".dev")[0]
    if module.built_with_mlx != running:
        return {
            "module": None,
            "why": f"the CPU kernels were built for mlx {module.built_with_mlx} but mlx {running} "
            "is installed; MLX's own ops run until dpt_mlx is reinstalled",
        }
    why = _open_blas(module)
    if why:
        return {"module": None, "why": why}
    module.set_threads(default_threads())
    return {"module": module, "why": None}


def kernels():
    """The extension module, or None when it is unavailable (:func:`unavailable` says why)."""
    with _lock:
        if not _state:
            _state.update(_load())
        return _state["module"]


def unavailable() -> str | None:
    """One line saying why the compiled kernels are not used, or None when they are."""
    kernels()
    return _state["why"]


def set_threads(n: int | None = None) -> int:
    """Give the kernels ``n`` threads (default :func:`default_threads`); returns the number set."""
    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be a positive integer, got {n}")
    module = kernels()
    if module is not None:
        module.set_threads(n)
    return n


def threads() -> int:
    """The kernels' threads (1 when they are unavailable)."""
    module = kernels()
    return module.threads() if module is not None else 1
