"""The optimized-BLAS setup for MLX's CPU backend on Linux (dpt_mlx/cpu/blas.py).

Linux only: conftest.py selects these tests by platform (the setup does nothing elsewhere).

No timing assertions: these check what is loaded and that results stay correct.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import mlx.core as mx
import numpy as np
import pytest

from dpt_mlx.cpu import blas as _blas
from dpt_mlx.cpu import elf
from dpt_mlx.cpu.blas import blas_info, setup

pytestmark = pytest.mark.linux

setup()  # normally done by the first model load on the CPU; idempotent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX = sys.platform.startswith("linux")

KEYS = {"platform", "mode", "provider", "library", "found_by", "version", "method", "threads", "set_up",
        "mlx_imported_before_setup", "notes", "mlx_cblas_sgemm", "effective"}


def _run_info(env_value, code_before="", extra_env=None):
    """blas_info() from a fresh interpreter with DPT_MLX_BLAS=env_value."""
    env = dict(os.environ)
    env.pop("DPT_MLX_BLAS", None)
    if env_value is not None:
        env["DPT_MLX_BLAS"] = env_value
    env.update(extra_env or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = textwrap.dedent(code_before) + textwrap.dedent(
        """
        import json, warnings
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            from dpt_mlx.cpu.blas import blas_info, setup
            setup()
            info = blas_info()
        import mlx.core as mx, numpy as np
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        info["matmul_ok"] = bool(np.allclose(np.array(mx.array(a) @ mx.array(a.T)), a @ a.T))
        info["warnings"] = [str(x.message) for x in w]
        print("BLASINFO" + json.dumps(info))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    line = [x for x in out.stdout.splitlines() if x.startswith("BLASINFO")][-1]
    return json.loads(line[len("BLASINFO"):])


def test_blas_info_reports_sensibly():
    info = blas_info()
    assert KEYS <= set(info)
    assert isinstance(info["notes"], list)
    if not LINUX:
        assert info["provider"] is None and info["effective"] is None
        return
    if info["provider"] is not None and info["mode"] != "off":
        assert info["effective"] is True, info
        if info["provider"] != "preexisting":
            assert os.path.exists(info["library"])
            assert info["library"] in info["mlx_cblas_sgemm"]
            assert info["method"] in ("PLT rebind", "RTLD_GLOBAL preload + PLT rebind")
            assert "cblas_sgemm" in info["rebound_symbols"]
    else:
        assert info["effective"] in (False, None)


def test_setup_is_idempotent():
    assert setup() == setup()
    assert blas_info()["provider"] == setup()["provider"]


def test_libmlx_gemm_slots_are_found():
    base_path = elf.find_libmlx()
    assert base_path is not None
    slots, why = elf.elf_gemm_slots(base_path[1], _blas._GEMM_SYMBOLS)
    assert "cblas_sgemm" in slots, why


def test_off_keeps_reference_blas():
    info = _run_info("off")
    assert info["mode"] == "off"
    assert info["provider"] is None and info["method"] is None
    assert info["effective"] is False
    assert "mlx_cpu" in info["mlx_cblas_sgemm"]  # mlx-cpu's bundled libblas
    assert info["matmul_ok"]


def test_auto_uses_scipy_openblas32():
    info = _run_info(None)
    assert info["mode"] == "auto"
    assert info["provider"] == "scipy-openblas32"
    assert info["effective"] is True
    assert "scipy_openblas" in info["mlx_cblas_sgemm"]
    assert info["version"].startswith("OpenBLAS")
    assert info["matmul_ok"]


def test_mlx_imported_and_used_first_still_rebinds():
    before = """
        import mlx.core as mx
        mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64)))   # binds and calls cblas_sgemm
    """
    info = _run_info("openblas", code_before=before)
    assert info["mlx_imported_before_setup"] is True
    assert info["method"] == "PLT rebind"
    assert info["effective"] is True
    assert info["matmul_ok"]


def test_bad_path_falls_back_without_crashing():
    info = _run_info("/nonexistent/libnothing.so")
    assert info["provider"] is None
    assert info["effective"] is False
    assert any("not found" in n for n in info["notes"]) or info["warnings"]
    assert info["matmul_ok"]


def test_unusable_setting_is_one_note_and_one_warning_line(tmp_path):
    info = _run_info("no-such-blas")
    assert info["provider"] is None and info["effective"] is False and info["matmul_ok"]
    assert len(info["notes"]) == 1, info["notes"]
    assert "DPT_MLX_BLAS='no-such-blas'" in info["notes"][0] and "cannot open shared object" in info["notes"][0]
    assert len(info["warnings"]) == 1 and "\n" not in info["warnings"][0]
    assert "DPT_MLX_BLAS='no-such-blas'" in info["warnings"][0]
    # printed by Python's default warning display: one line, no source line of the caller under it
    script = tmp_path / "load.py"
    script.write_text("from dpt_mlx.cpu.blas import setup\nsetup()\n")
    env = dict(os.environ, DPT_MLX_BLAS="no-such-blas", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, str(script)], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0
    lines = out.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and "RuntimeWarning" in lines[0] and "no-such-blas" in lines[0], out.stderr


def test_thread_count_above_the_library_maximum_is_noted():
    info = _run_info(None, extra_env={"DPT_MLX_BLAS_THREADS": "1000000"})
    assert info["provider"] == "scipy-openblas32"
    assert 1 <= info["threads"] < 1000000
    assert f"DPT_MLX_BLAS_THREADS=1000000 capped at {info['threads']}" in " ".join(info["notes"])


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_thread_count_that_is_not_positive_is_ignored_with_a_note(value):
    info = _run_info(None, extra_env={"DPT_MLX_BLAS_THREADS": value})
    assert info["threads"] >= 1 and info["matmul_ok"]
    assert f"DPT_MLX_BLAS_THREADS={value!r} ignored (not a positive integer)" in info["notes"]


def test_explicit_path_and_threads():
    import scipy_openblas32

    lib = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
    if not os.path.exists(lib):
        pytest.skip("unexpected scipy-openblas32 layout")
    info = _run_info(lib, extra_env={"DPT_MLX_BLAS_THREADS": "1"})
    assert info["provider"] == "custom" and info["symbol_prefix"] == "scipy_"
    assert info["threads"] == 1
    assert info["effective"] is True


# ----------------------------------------------------------- numerical checks
# Run with whatever provider this process got (scipy-openblas32 by default on Linux).


@pytest.mark.parametrize(
    "shape_a, shape_b, ta, tb",
    [((64, 48), (48, 80), False, False), ((257, 130), (257, 66), True, False),
     ((33, 70), (45, 70), False, True), ((3, 5, 40, 24), (3, 5, 24, 31), False, False)],
)
def test_matmul_matches_numpy(shape_a, shape_b, ta, tb):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape_a, dtype=np.float32)
    b = rng.standard_normal(shape_b, dtype=np.float32)
    A, B = mx.array(a), mx.array(b)
    A = mx.swapaxes(A, -1, -2) if ta else A  # transposed views -> cblas transpose flags
    B = mx.swapaxes(B, -1, -2) if tb else B
    a = np.swapaxes(a, -1, -2) if ta else a
    b = np.swapaxes(b, -1, -2) if tb else b
    got = np.array(A @ B)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_addmm_and_other_dtypes_match_numpy():
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal(s, dtype=np.float32) for s in ((50, 40), (40, 30), (50, 30)))
    got = np.array(mx.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=0.5, beta=2.0))
    np.testing.assert_allclose(got, 0.5 * (a @ b) + 2.0 * c, rtol=1e-4, atol=1e-4)
    d, e = rng.standard_normal((40, 30)), rng.standard_normal((30, 20))  # cblas_dgemm
    got = np.array(mx.matmul(mx.array(d, dtype=mx.float64), mx.array(e, dtype=mx.float64), stream=mx.cpu))
    np.testing.assert_allclose(got, d @ e, rtol=1e-12, atol=1e-12)
    f = (rng.standard_normal((20, 12)) + 1j * rng.standard_normal((20, 12))).astype(np.complex64)
    g = (rng.standard_normal((12, 7)) + 1j * rng.standard_normal((12, 7))).astype(np.complex64)
    got = np.array(mx.array(f) @ mx.array(g))  # cblas_cgemm
    np.testing.assert_allclose(got, f.astype(np.complex128) @ g, rtol=1e-4, atol=1e-4)


def _conv2d_numpy(x, w, stride, padding):
    """NHWC x, OHWI w (MLX layout), float64."""
    x = np.pad(x.astype(np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, oh, ow, o))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :]
            out += patch @ w[:, i, j, :].T.astype(np.float64)
    return out


@pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (4, 4, 0)])
def test_conv2d_matches_numpy(k, stride, padding):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 20, 20, 24), dtype=np.float32)
    w = rng.standard_normal((40, k, k, 24), dtype=np.float32) / np.sqrt(k * k * 24)
    got = np.array(mx.conv2d(mx.array(x), mx.array(w), stride=stride, padding=padding))
    want = _conv2d_numpy(x, w, stride, padding)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_conv_transpose2d_matches_numpy():
    """DPT's reassemble stage upsamples with ConvTranspose2d(kernel=stride)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 7, 16), dtype=np.float32)
    w = rng.standard_normal((8, 4, 4, 16), dtype=np.float32)  # OHWI
    got = np.array(mx.conv_transpose2d(mx.array(x), mx.array(w), stride=4))
    want = np.einsum("nhwc,oijc->nhiwjo", x.astype(np.float64), w).reshape(1, 24, 28, 8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_failure_during_rebind_leaves_mlx_working():
    """A fresh process whose slot write fails: no exception, reference BLAS."""
    code = """
        import json
        from dpt_mlx.cpu import blas as b
        def boom(addr, value):
            raise OSError("simulated")
        b.write_pointer = boom
        b.setup()
        info = b.blas_info()
        import mlx.core as mx, numpy as np
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        info["matmul_ok"] = bool(np.allclose(np.array(mx.array(a) @ mx.array(a.T)), a @ a.T))
        print("BLASINFO" + json.dumps(info))
    """
    env = dict(os.environ, DPT_MLX_BLAS="openblas", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    info = json.loads([x for x in out.stdout.splitlines() if x.startswith("BLASINFO")][-1][8:])
    assert info["provider"] is None and info["method"] is None
    assert any("simulated" in n for n in info["notes"])
    assert info["effective"] is False and info["matmul_ok"]


def _raw_openblas32_core(coretype):
    """The kernel set scipy-openblas32 picks by itself with OPENBLAS_CORETYPE=coretype (None: unset)."""
    code = textwrap.dedent(
        """
        import ctypes, glob, os, scipy_openblas32
        lib = sorted(glob.glob(os.path.join(os.path.dirname(scipy_openblas32.__file__), "lib", "*.so*")))[0]
        fn = ctypes.CDLL(lib).scipy_openblas_get_config
        fn.restype = ctypes.c_char_p
        print(fn().decode().split()[-2])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return out.stdout.split()[-1]


x86_only = pytest.mark.x86_64  # the kernel names tested are x86-64's


@x86_only
def test_own_openblas_detects_the_cpu_and_leaves_the_environment_alone():
    detected = _raw_openblas32_core(None)
    pinned = _raw_openblas32_core("Haswell")
    assert pinned == "Haswell"  # the variable does steer a plain OpenBLAS load
    check_env = "import os; print('ENV' + str(os.environ.get('OPENBLAS_CORETYPE')))\n"
    code = "import os\nos.environ.pop('DPT_MLX_OPENBLAS_CORETYPE', None)\n"
    info = _run_info(None, code, {"OPENBLAS_CORETYPE": "Haswell"})
    assert info["provider"] == "scipy-openblas32"
    assert info["version"].split()[-2] == detected
    assert any("OPENBLAS_CORETYPE=Haswell left to" in n for n in info["notes"])
    # the process's environment is restored after the load
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", PYTHONPATH=ROOT)
    env.pop("DPT_MLX_OPENBLAS_CORETYPE", None)
    out = subprocess.run([sys.executable, "-c", "import dpt_mlx\n" + check_env], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    assert "ENVHaswell" in out.stdout


@x86_only
def test_own_openblas_kernels_can_be_pinned():
    info = _run_info(None, extra_env={"DPT_MLX_OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_CORETYPE": "Sandybridge"})
    assert info["version"].split()[-2] == "Haswell"
    assert info["matmul_ok"]
    assert any("DPT_MLX_OPENBLAS_CORETYPE=Haswell" in n for n in info["notes"])


def test_import_changes_nothing_until_a_model_is_loaded_on_the_cpu():
    code = textwrap.dedent(
        """
        import json
        import dpt_mlx, mlx.core as mx
        before = dpt_mlx.blas_info()
        limit = mx.set_cache_limit(32 << 20)
        config = dpt_mlx.DPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                   image_size=32, backbone_out_indices=[0, 1, 1, 1], neck_hidden_sizes=[8, 16, 16, 32],
                                   fusion_hidden_size=16)
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            dpt_mlx.DPTForDepthEstimation(config).save_pretrained(d)
            dpt_mlx.load_model(d)
        after = dpt_mlx.blas_info()
        print("BLASINFO" + json.dumps({"before": before, "after": after, "cache_limit_at_import": limit}))
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    for name in ("DPT_MLX_BLAS", "DPT_MLX_FAST_KERNELS"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    info = json.loads([x for x in out.stdout.splitlines() if x.startswith("BLASINFO")][-1][8:])
    before, after = info["before"], info["after"]
    assert not before["set_up"] and before["provider"] is None and before["effective"] is False
    assert "mlx_cpu" in before["mlx_cblas_sgemm"]  # the reference BLAS the wheel ships
    assert info["cache_limit_at_import"] == 32 << 20  # MLX's own CPU cache limit
    assert after["set_up"] and after["provider"] == "scipy-openblas32" and after["effective"] is True
