"""Use an optimized BLAS for MLX's CPU backend on Linux.

The ``mlx[cpu]`` wheel for Linux links the netlib *reference* BLAS that it bundles
(``mlx_cpu.libs/libblas-*.so.3``). Its ``cblas_sgemm`` runs at a few GFLOP/s, and MLX's
CPU matmul and convolution (im2col + gemm) both go through it, so a DPT forward
pass is 10-30x slower than it needs to be. On macOS MLX uses Accelerate/Metal and
this module does nothing.

How it works (measured on mlx 0.32.4, see ``benchmarks/blas_check.py``):

* ``libmlx.so`` imports ``cblas_sgemm``/``cblas_dgemm``/``cblas_cgemm`` (and some
  LAPACK routines) as plain, unversioned undefined symbols, called through its PLT.
  Python loads extension modules with ``RTLD_NOW``, so the PLT slots are bound
  when ``mlx.core`` is imported, to the bundled reference BLAS.
* We load an optimized BLAS and write the addresses of its gemm routines into
  those PLT/GOT slots of ``libmlx.so`` ("PLT rebinding"). Only libmlx is affected;
  nothing is exported into the process's global symbol scope, the symbols do not
  need to be named ``cblas_*`` (the ``scipy-openblas32`` wheel prefixes them with
  ``scipy_``), and it works even when ``mlx.core`` was imported before dpt_mlx.
* An unprefixed library (MKL's ``libmkl_rt``, a system ``libopenblas``, a user
  path) is in addition loaded with ``RTLD_GLOBAL`` when ``mlx.core`` is not yet
  imported, which is the classic interposition and also covers MLX's LAPACK calls.
  (A global preload *after* ``import mlx.core`` is useless: the slots are already
  bound.)
* Before writing, every slot is checked to point at a function called
  ``cblas_?gemm`` (``dladdr``); any surprise aborts without changing anything.
  ``blas_info()`` reads the slot back, so it reports the BLAS MLX really calls.

Selection, by the environment variable ``DPT_MLX_BLAS``:

``auto`` (default)
    ``scipy-openblas32`` (pip dependency of dpt_mlx on Linux), then MKL from the
    ``mkl`` pip package, then a system OpenBLAS / MKL, then the LP64 OpenBLAS
    bundled with SciPy. A BLAS that the user already interposed (``LD_PRELOAD``)
    is left alone.
``off``
    Do nothing; MLX keeps its reference BLAS.
``openblas`` / ``mkl`` / ``system`` / ``scipy``
    Only that source.
a path to a ``.so``
    That library (unprefixed ``cblas_sgemm`` or ``scipy_``-prefixed, LP64 only).

``scipy-openblas32`` is loaded for MLX alone, so it picks its kernels from the CPU even when
``OPENBLAS_CORETYPE`` is set for the process's other OpenBLAS copies (the variable is hidden
during the load only; see ``_own_openblas_env``). ``DPT_MLX_OPENBLAS_CORETYPE=Haswell`` (or any
OpenBLAS core name) pins its kernels; ``blas_info()["version"]`` names the kernels in use.

``DPT_MLX_BLAS_THREADS=N`` sets the provider's thread count (otherwise it follows
``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``OMP_NUM_THREADS``, else the
number of CPUs this process may use: affinity mask, capped by a cgroup CPU quota).
On a machine shared with other busy processes (CI runners, several jobs on few
cores) use ``DPT_MLX_BLAS_THREADS=1``: a multi-threaded OpenBLAS gemm waits for
all of its threads, and when they are descheduled it can fall to reference-BLAS
speed (measured: 512^2 sgemm 5 GFLOP/s with 2 threads vs 120 with 1 on a 2-core VM
at load 6; 240 vs 120 when the cores are free).

Only float32/float64/complex64 matmul and convolution use BLAS; MLX's float16 and
bfloat16 CPU matmuls do not (a few GFLOP/s either way), so run on CPU in float32.

``setup()`` never raises: any failure leaves MLX as it was and is reported by
``blas_info()``.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.util
import mmap
import os
import platform
import struct
import sys
import threading
import warnings

__all__ = ["blas_info", "setup"]

ENV_VAR = "DPT_MLX_BLAS"
THREADS_ENV_VAR = "DPT_MLX_BLAS_THREADS"

# The gemm entry points libmlx imports; only these are rebound (LAPACK is not on
# any DPT code path and is left to the RTLD_GLOBAL preload where that applies).
_GEMM_SYMBOLS = ("cblas_sgemm", "cblas_dgemm", "cblas_cgemm")
_PROBE_SYMBOL = "cblas_sgemm"

# ELF relocation types that hold the address of a called function.
_SLOT_RELOCS = {
    62: (7, 6),  # EM_X86_64: R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT
    183: (1026, 1025),  # EM_AARCH64: R_AARCH64_JUMP_SLOT, R_AARCH64_GLOB_DAT
}

_lock = threading.RLock()
_state: dict | None = None
_keepalive: list = []  # provider handles must outlive the process's use of them


# --------------------------------------------------------------------------- ELF


def _elf_gemm_slots(path: str, names) -> tuple[dict, str | None]:
    """Offsets (relative to the load base) of the GOT slots of ``names`` in ``path``.

    Parses the dynamic segment the way the loader does: DT_JMPREL (PLT relocations)
    and DT_RELA (for -fno-plt builds that call through GLOB_DAT slots).
    """
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse_slots(data, frozenset(names))
    finally:
        data.close()


@functools.lru_cache(maxsize=8)
def _slots_cached(path: str, names: tuple, mtime: float):
    return _elf_gemm_slots(path, names)


def _slots(path, names):
    return _slots_cached(path, tuple(names), os.path.getmtime(path))


def _parse_slots(data, wanted):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}, "not a little-endian ELF64 file"
    (e_machine,) = struct.unpack_from("<H", data, 18)
    if e_machine not in _SLOT_RELOCS:
        return {}, f"unsupported ELF machine {e_machine}"
    (e_phoff,) = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    loads, dynamic = [], None
    for i in range(e_phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize
        )
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return {}, "no PT_DYNAMIC segment"

    def to_offset(vaddr):
        for va, off, size in loads:
            if va <= vaddr < va + size:
                return vaddr - va + off
        raise ValueError(f"address {vaddr:#x} is not in a PT_LOAD segment")

    dyn = {}
    off, size = dynamic
    for i in range(0, size, 16):
        tag, val = struct.unpack_from("<qQ", data, off + i)
        if tag == 0:
            break
        dyn.setdefault(tag, val)
    if 6 not in dyn or 5 not in dyn:
        return {}, "no dynamic symbol table"
    symtab, strtab, syment = to_offset(dyn[6]), to_offset(dyn[5]), dyn.get(11, 24)
    jump_slot, glob_dat = _SLOT_RELOCS[e_machine]
    slots: dict = {}
    tables = []
    if 23 in dyn and 2 in dyn:  # DT_JMPREL, DT_PLTRELSZ (RELA on both arches)
        tables.append((to_offset(dyn[23]), dyn[2]))
    if 7 in dyn and 8 in dyn:  # DT_RELA, DT_RELASZ
        tables.append((to_offset(dyn[7]), dyn[8]))
    for table, table_size in tables:
        for i in range(0, table_size, 24):
            r_offset, r_info, _ = struct.unpack_from("<QQq", data, table + i)
            if (r_info & 0xFFFFFFFF) not in (jump_slot, glob_dat):
                continue
            (st_name,) = struct.unpack_from("<I", data, symtab + (r_info >> 32) * syment)
            end = data.find(b"\0", strtab + st_name)
            name = data[strtab + st_name : end].decode("ascii", "replace")
            if name in wanted:
                slots.setdefault(name, []).append(r_offset)
    return slots, None


# ---------------------------------------------------------------- dynamic loader


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


class _DlPhdrInfo(ctypes.Structure):
    _fields_ = [
        ("dlpi_addr", ctypes.c_size_t),
        ("dlpi_name", ctypes.c_char_p),
        ("dlpi_phdr", ctypes.c_void_p),
        ("dlpi_phnum", ctypes.c_uint16),
    ]


_libc = None


def _c():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "dladdr"):  # glibc < 2.34 keeps it in libdl
            libc = ctypes.CDLL("libdl.so.2", use_errno=True)
            libc.dl_iterate_phdr = ctypes.CDLL(None).dl_iterate_phdr
            libc.mprotect = ctypes.CDLL(None, use_errno=True).mprotect
        libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = libc
    return _libc


def _dladdr(addr):
    """(library path, symbol name) that ``addr`` belongs to, or (None, None)."""
    info = _DlInfo()
    if not addr or not _c().dladdr(ctypes.c_void_p(addr), ctypes.byref(info)):
        return None, None
    fname = info.dli_fname.decode(errors="replace") if info.dli_fname else None
    sname = info.dli_sname.decode(errors="replace") if info.dli_sname else None
    if fname:
        fname = os.path.realpath(fname)
    return fname, sname


def _loaded_objects():
    """[(load base, path)] of every object loaded in the process."""
    out = []
    callback_type = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(_DlPhdrInfo), ctypes.c_size_t, ctypes.c_void_p
    )

    def callback(info, size, data):
        name = info.contents.dlpi_name
        if name:
            out.append((info.contents.dlpi_addr, name.decode(errors="replace")))
        return 0

    _c().dl_iterate_phdr(callback_type(callback), None)
    return out


def _find_libmlx():
    """(load base, real path) of the libmlx.so loaded in this process, or None."""
    for base, name in _loaded_objects():
        if os.path.basename(name).startswith("libmlx.so"):
            return base, os.path.realpath(name)
    return None


def _symbol_address(handle, name):
    try:
        return ctypes.cast(getattr(handle, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _page_is_writable(addr):
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                span, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in span.split("-"))
                if lo <= addr < hi:
                    return "w" in perms, perms
    except OSError:
        pass
    return False, None


def _write_pointer(addr, value):
    writable, _ = _page_is_writable(addr)
    if writable:
        ctypes.c_void_p.from_address(addr).value = value
        return
    # Full RELRO (or a -fno-plt GLOB_DAT slot): unprotect the page for the write.
    page = os.sysconf("SC_PAGE_SIZE")
    start = addr & ~(page - 1)
    prot_rw, prot_r = 0x1 | 0x2, 0x1
    if _c().mprotect(ctypes.c_void_p(start), page, prot_rw) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    try:
        ctypes.c_void_p.from_address(addr).value = value
    finally:
        _c().mprotect(ctypes.c_void_p(start), page, prot_r)


def _read_pointer(addr):
    return ctypes.c_void_p.from_address(addr).value


# ----------------------------------------------------------------- providers


def _is_reference(path):
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


def _cpu_count():
    """CPUs this process can really use: affinity mask, capped by a cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(n, limit) if limit else n


def _candidates(mode):
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


def _open_provider(name, path, global_ok, notes):
    """Load ``path``; return (handle, symbol prefix, version) or None."""
    if "/" in path and not os.path.exists(path):  # a bare soname goes to dlopen's search
        notes.append(f"{path}: not found")
        return None
    # Probe the naming without exporting anything globally.
    try:
        if name == "scipy-openblas32":
            with _own_openblas_env(notes):
                handle = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        else:
            handle = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    except OSError as exc:
        notes.append(f"{path}: cannot be loaded ({exc})")
        return None
    prefix = None
    for p in ("", "scipy_"):
        if _symbol_address(handle, p + _PROBE_SYMBOL):
            prefix = p
            break
    if prefix is None:
        notes.append(f"{path}: exports neither cblas_sgemm nor scipy_cblas_sgemm")
        return None

    version = _openblas_config(handle, prefix)
    if version is not None and "USE64BITINT" in version:
        notes.append(f"{path}: ILP64 (64-bit integer) build, not ABI compatible with MLX")
        return None
    if prefix == "" and _symbol_address(handle, "MKL_Set_Interface_Layer"):
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


def _set_threads(handle, prefix, notes):
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
            if n < 1:
                raise ValueError
            set_fn(n)
        except ValueError:
            notes.append(f"{THREADS_ENV_VAR}={requested!r} ignored (not a positive integer)")
    elif not any(
        os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
    ):
        usable = _cpu_count()
        if get_fn() > usable:
            set_fn(usable)
    return int(get_fn())


# -------------------------------------------------------------------- public API


def _current_binding(libmlx=None):
    """Which library libmlx's cblas_sgemm slot points at, read from memory."""
    libmlx = libmlx or _find_libmlx()
    if libmlx is None:
        return {"mlx_loaded": False}
    base, path = libmlx
    slots, why = _slots(path, (_PROBE_SYMBOL,))
    if not slots:
        return {"mlx_loaded": True, "libmlx": path, "slot": None, "reason": why
                or "libmlx.so does not import cblas_sgemm dynamically"}
    target = _read_pointer(base + slots[_PROBE_SYMBOL][0])
    lib, sym = _dladdr(target)
    if lib == path:
        return {"mlx_loaded": True, "libmlx": path, "slot": "unresolved (lazy binding)"}
    return {"mlx_loaded": True, "libmlx": path, "slot": f"{sym} in {lib}", "library": lib,
            "symbol": sym, "reference": _is_reference(lib)}


CORETYPE_ENV_VAR = "DPT_MLX_OPENBLAS_CORETYPE"


class _own_openblas_env:
    """While loading dpt_mlx's own OpenBLAS (the ``scipy-openblas32`` wheel, which nothing else in
    the process uses), let it pick its kernels from the CPU, or from ``DPT_MLX_OPENBLAS_CORETYPE``.

    OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when the library initialises. A value in the
    environment is usually there for the process's other OpenBLAS copies (NumPy's, SciPy's), and
    pinning an older kernel halves MLX's matmul speed (measured on an AVX-512 CPU with
    ``OPENBLAS_CORETYPE=Haswell``: 270 -> 495 GFLOP/s for a 577x1024 @ 1024x4096 product on
    2 cores). The variable is changed only for the ``dlopen`` and restored right after, so
    everything else in the process (and its children) still sees the user's setting.

    Unless ``OPENBLAS_THREAD_TIMEOUT`` is set, its idle worker threads also go to sleep at once
    instead of spinning for ~2**28 cycles after each product: the softmax threads of
    ``kernels.attention`` run between products and would otherwise share a core with a
    spinning worker (DPT-Large layer 53 -> 51 ms, a Depth-Anything-small layer 41 -> 36 ms).
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
            lib, _ = _dladdr(_symbol_address(ctypes.CDLL(None), _PROBE_SYMBOL))
        if lib and not _is_reference(lib):
            importlib.import_module("mlx.core")  # binds libmlx's slots

            info.update(provider="preexisting", library=lib, method="global interposition",
                        found_by="already bound before dpt_mlx was imported (LD_PRELOAD?)")
            return

    chosen = None
    for name, path, how in _candidates(mode):
        opened = _open_provider(name, path, global_ok=not mlx_before, notes=notes)
        if opened is not None:
            chosen = (name, path, how) + opened
            break
    if chosen is None:
        if explicit:
            why = "; ".join(notes) or "no such library installed"
            warnings.warn(f"dpt_mlx: {ENV_VAR}={mode!r}: no usable BLAS ({why}); "
                          "MLX keeps its reference BLAS", RuntimeWarning, stacklevel=3)
        else:
            notes.append("no optimized BLAS found; `pip install scipy-openblas32` or "
                         "`apt install libopenblas0-pthread`")
        return
    name, path, how, handle, prefix, version = chosen
    _keepalive.append(handle)
    library = _dladdr(_symbol_address(handle, prefix + _PROBE_SYMBOL))[0] or path
    info.update(provider=name, library=library, found_by=how, version=version,
                symbol_prefix=prefix)
    global_preload = prefix == "" and not mlx_before
    if global_preload:
        info["method"] = "RTLD_GLOBAL preload"  # upgraded below once the slots are rebound
    info["threads"] = _set_threads(handle, prefix, notes)

    importlib.import_module("mlx.core")  # loads libmlx.so, binding its slots (RTLD_NOW)

    libmlx = _find_libmlx()
    if libmlx is None:
        notes.append("libmlx.so is not loaded after `import mlx.core`; nothing rebound")
        return
    base, mlx_path = libmlx
    slots, why = _slots(mlx_path, _GEMM_SYMBOLS)
    if not slots:
        notes.append(why or "libmlx.so does not import cblas_*gemm dynamically; nothing to do")
        info["method"] = "global interposition" if global_preload else None
        return

    # Plan every write, checking that each slot holds a cblas_?gemm, then write.
    plan = []
    for sym, offsets in slots.items():
        target = _symbol_address(handle, prefix + sym)
        if target is None:
            raise RuntimeError(f"{path} lacks {prefix + sym}")
        for off in offsets:
            current = _read_pointer(base + off)
            cur_lib, cur_sym = _dladdr(current)
            if cur_lib != mlx_path and sym.split("_", 1)[1] not in (cur_sym or "").lower():
                raise RuntimeError(f"libmlx slot for {sym} points at {cur_sym} in {cur_lib}; "
                                   "refusing to patch")
            plan.append((base + off, target))
    for addr, target in plan:
        _write_pointer(addr, target)
    for addr, target in plan:
        if _read_pointer(addr) != target:
            raise RuntimeError("PLT slot write did not stick")
    info["method"] = "RTLD_GLOBAL preload + PLT rebind" if global_preload else "PLT rebind"
    info["rebound_symbols"] = sorted(slots)
    if mlx_before and prefix == "":
        notes.append("mlx.core was imported before dpt_mlx: a global preload would have been "
                     "too late (slots bound at import); rebinding the PLT slots fixed gemm, "
                     "MLX's LAPACK calls stay on the reference library")


def setup() -> dict:
    """Select an optimized BLAS for MLX (Linux only). Idempotent; never raises."""
    global _state
    with _lock:
        if _state is not None:
            return dict(_state)
        mode = os.environ.get(ENV_VAR, "auto").strip() or "auto"
        low = mode.lower()
        if low in ("auto", "on", "1", "true", "yes"):
            mode = "auto"
        elif low in ("off", "0", "false", "no", "none", "reference"):
            mode = "off"
        elif low in ("openblas", "scipy-openblas32", "mkl", "system", "scipy"):
            mode = "openblas" if low == "scipy-openblas32" else low
        info = {
            "platform": sys.platform,
            "mode": mode,
            "provider": None,
            "library": None,
            "found_by": None,
            "version": None,
            "method": None,
            "threads": None,
            "mlx_imported_before_setup": "mlx.core" in sys.modules,
            "notes": [],
        }
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


def blas_info() -> dict:
    """What BLAS MLX's CPU backend uses, and how it was chosen.

    Keys: ``provider`` (``scipy-openblas32``, ``mkl``, ``system-openblas``, ...,
    or None), ``library`` (path), ``found_by``, ``version``, ``method`` (``PLT
    rebind``, ``RTLD_GLOBAL preload + PLT rebind``, ``global interposition`` or
    None), ``threads``, ``mlx_imported_before_setup``, ``mode`` (the
    ``DPT_MLX_BLAS`` setting), ``notes``, and ``mlx_cblas_sgemm``: where libmlx's
    ``cblas_sgemm`` call really goes, read from memory now, with ``effective``
    (True when that is not a reference BLAS).
    """
    info = setup()
    info["notes"] = list(info["notes"])
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
