"""Finding and opening a BLAS for MLX: the candidate libraries in priority order, their kernels,
versions and thread counts (for dpt_mlx.cpu.blas)."""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import platform

from .elf import symbol_address

ENV_VAR = "DPT_MLX_BLAS"
THREADS_ENV_VAR = "DPT_MLX_BLAS_THREADS"
PROBE_SYMBOL = "cblas_sgemm"


def is_reference(path):
    """Whether ``path`` is mlx-cpu's bundled (or a netlib) reference BLAS."""
    if not path:
        return False
    if "mlx_cpu" in path:
        return True
    low = path.lower()
    if any(k in low for k in ("openblas", "mkl", "blis", "atlas", "armpl", "nvpl")):
        return False  # e.g. Debian's alternatives: .../openblas-pthread/libblas.so.3
    return os.path.basename(low).startswith(("libblas", "libcblas", "librefblas"))


def _openblas_config(handle, prefix):
    fn = getattr(handle, prefix + "openblas_get_config", None)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    try:
        return fn().decode(errors="replace").strip()
    except Exception:  # noqa: BLE001
        return None


def _mkl_version(handle):
    fn = getattr(handle, "MKL_Get_Version_String", None)
    if fn is None:
        return None
    buf = ctypes.create_string_buffer(256)
    fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
    fn.restype = None
    fn(buf, 256)
    return buf.value.decode(errors="replace").strip()


def _cgroup_cpu_limit():
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


def cpu_count():
    """CPUs this process can really use: affinity mask, capped by a cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(n, limit) if limit else n


def candidates(mode):
    """Yield (name, path, how it was found) in priority order for ``mode``."""
    machine = platform.machine()
    if mode not in ("auto", "openblas", "mkl", "system", "scipy"):
        yield "custom", mode, f"{ENV_VAR}={mode}"
        return

    if mode in ("auto", "openblas"):
        spec = importlib.util.find_spec("scipy_openblas32")
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                for path in sorted(glob.glob(os.path.join(loc, "lib", "libscipy_openblas*.so*"))):
                    yield "scipy-openblas32", path, "pip package scipy-openblas32"

    if mode in ("auto", "mkl"):
        try:
            from importlib import metadata

            files = metadata.files("mkl") or []
        except Exception:  # noqa: BLE001
            files = []
        for f in files:
            if os.path.basename(str(f)).startswith("libmkl_rt.so"):
                yield "mkl", os.path.realpath(str(f.locate())), "pip package mkl"

    if mode in ("auto", "system"):
        triplet = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, "")
        patterns = [
            f"/usr/lib/{triplet}/openblas-pthread/libopenblas.so.0",  # Debian/Ubuntu
            f"/usr/lib/{triplet}/libopenblas.so.0",
            f"/usr/lib/{triplet}/openblas-openmp/libopenblas.so.0",
            "/usr/lib64/libopenblasp.so.0",  # Fedora/RHEL pthread build
            "/usr/lib64/libopenblas.so.0",
            "/usr/lib/libopenblas.so.0",  # Arch, Alpine
            "/usr/local/lib/libopenblas.so.0",
            "/opt/OpenBLAS/lib/libopenblas.so.0",
        ]
        for path in patterns:
            if os.path.exists(path):
                yield "system-openblas", path, "system library search"
        for path in [
            f"/usr/lib/{triplet}/libmkl_rt.so",
            "/opt/intel/oneapi/mkl/latest/lib/libmkl_rt.so.2",
            "/opt/intel/oneapi/mkl/latest/lib/intel64/libmkl_rt.so.2",
        ]:
            if os.path.exists(path):
                yield "system-mkl", path, "system library search"

    if mode in ("auto", "scipy"):
        spec = importlib.util.find_spec("scipy")
        if spec is not None and spec.origin:
            libs = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), "scipy.libs")
            for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*.so*"))):
                if "64_" not in os.path.basename(path):  # the ILP64 build is unusable
                    yield "scipy-bundled-openblas", path, "OpenBLAS bundled with SciPy"


def open_provider(name, path, global_ok, notes):
    """Load ``path``; return (handle, symbol prefix, version) or None."""
    if "/" in path and not os.path.exists(path):  # a bare soname goes to dlopen's search
        notes.append(f"{path}: not found")
        return None
    # Probe the naming without exporting anything globally.
    try:
        if name == "scipy-openblas32":
            with own_openblas_env(notes):
                handle = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        else:
            handle = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    except OSError as exc:
        notes.append(f"{path}: cannot be loaded ({exc})")
        return None
    prefix = None
    for p in ("", "scipy_"):
        if symbol_address(handle, p + PROBE_SYMBOL):
            prefix = p
            break
    if prefix is None:
        notes.append(f"{path}: exports neither cblas_sgemm nor scipy_cblas_sgemm")
        return None

    version = _openblas_config(handle, prefix)
    if version is not None and "USE64BITINT" in version:
        notes.append(f"{path}: ILP64 (64-bit integer) build, not ABI compatible with MLX")
        return None
    if prefix == "" and symbol_address(handle, "MKL_Set_Interface_Layer"):
        # libmkl_rt honours MKL_INTERFACE_LAYER=ILP64; MLX passes 32-bit ints.
        fn = handle.MKL_Set_Interface_Layer
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        if fn(0) != 0:  # MKL_INTERFACE_LP64
            notes.append(f"{path}: cannot select MKL's LP64 interface")
            return None
        version = _mkl_version(handle) or "Intel MKL"
    if prefix == "" and global_ok:
        # Classic interposition: also lets libmlx's LAPACK imports bind to it.
        handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return handle, prefix, version


def set_threads(handle, prefix, notes):
    """Apply DPT_MLX_BLAS_THREADS, or cap the default to the usable CPUs."""
    requested = os.environ.get(THREADS_ENV_VAR, "").strip()
    set_fn = getattr(handle, prefix + "openblas_set_num_threads", None)
    get_fn = getattr(handle, prefix + "openblas_get_num_threads", None)
    if set_fn is None:
        set_fn = getattr(handle, "MKL_Set_Num_Threads", None)
        get_fn = getattr(handle, "MKL_Get_Max_Threads", None)
    if set_fn is None or get_fn is None:
        return None
    set_fn.argtypes, set_fn.restype = [ctypes.c_int], None
    get_fn.argtypes, get_fn.restype = [], ctypes.c_int
    if requested:
        try:
            n = int(requested)
        except ValueError:
            n = 0
        if n < 1:
            notes.append(f"{THREADS_ENV_VAR}={requested!r} ignored (not a positive integer)")
        else:
            set_fn(min(n, 2**31 - 1))  # a C int
            got = int(get_fn())
            if got < n:  # OpenBLAS caps at the MAX_THREADS it was built with
                notes.append(f"{THREADS_ENV_VAR}={n} capped at {got} (the most this BLAS library supports)")
    elif not any(
        os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
    ):
        usable = cpu_count()
        if get_fn() > usable:
            set_fn(usable)
    return int(get_fn())


CORETYPE_ENV_VAR = "DPT_MLX_OPENBLAS_CORETYPE"


class own_openblas_env:
    """While loading dpt_mlx's own OpenBLAS (the ``scipy-openblas32`` wheel, which nothing else in
    the process uses), let it pick its kernels from the CPU, or from ``DPT_MLX_OPENBLAS_CORETYPE``.

    OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when the library initialises. A value in the
    environment is usually there for the process's other OpenBLAS copies (NumPy's, SciPy's), and
    pinning an older kernel slows MLX's matrix products (README, "The BLAS on Linux"). The
    variable is changed only for the ``dlopen`` and restored right after, so everything else in
    the process (and its children) still sees the user's setting.

    Unless ``OPENBLAS_THREAD_TIMEOUT`` is set, its idle worker threads also go to sleep at once
    instead of spinning after each product: the softmax threads of ``kernels.attention`` run
    between products and would otherwise share a core with a spinning worker.
    """

    def __init__(self, notes):
        self.notes = notes
        self.saved = None
        self.timeout_set = False

    def __enter__(self):
        self.timeout_set = "OPENBLAS_THREAD_TIMEOUT" not in os.environ
        if self.timeout_set:
            os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"  # 2**4 cycles, OpenBLAS's minimum
        self.saved = os.environ.get("OPENBLAS_CORETYPE")
        own = os.environ.get(CORETYPE_ENV_VAR, "").strip()
        if own:
            os.environ["OPENBLAS_CORETYPE"] = own
            self.notes.append(f"{CORETYPE_ENV_VAR}={own}: OpenBLAS kernels chosen by the user")
        elif self.saved is not None:
            del os.environ["OPENBLAS_CORETYPE"]
            self.notes.append(f"OPENBLAS_CORETYPE={self.saved} left to the process's other OpenBLAS copies; "
                              f"dpt_mlx's own detects the CPU (set {CORETYPE_ENV_VAR} to pin its kernels)")
        return self

    def __exit__(self, *exc):
        if self.timeout_set:
            os.environ.pop("OPENBLAS_THREAD_TIMEOUT", None)
        if self.saved is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
        else:
            os.environ["OPENBLAS_CORETYPE"] = self.saved
        return False


