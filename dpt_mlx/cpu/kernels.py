"""The CPU backend's fast paths: functions that rewrite the operations MLX's CPU backend runs
slowly as matrix products (BLAS) and short chains of cheap elementwise ops.

- :func:`gelu`: exact-erf GELU with a rational erf (max abs error 4e-7);
- :func:`attention`: softmax attention whose scores come from BLAS and whose softmax runs on
  every core (NumPy, in place), with an MLX formulation (a polynomial exp with exponent bits,
  compiled, in cache-sized blocks) for gradients and inside ``mx.compile`` / ``mx.vmap``;
- :func:`conv2d_stride1`: stride-1 convolutions as one matrix product per kernel tap on
  contiguous slices of the flattened padded input (no im2col copy);
- :func:`matmul`: half-precision products in float32.

Half-precision inputs are computed in float32 and rounded back. Every path agrees with the plain
MLX op to float32 rounding (tests/test_cpu_kernels.py); measured effects are in the README.
"""

from __future__ import annotations

import math

import mlx.core as mx

__all__ = ["attention", "conv2d_stride1", "erf", "exp_nonpositive", "gelu", "matmul", "set_threads"]

_HALF = (mx.float16, mx.bfloat16)


def _f32(x: mx.array) -> mx.array:
    return x.astype(mx.float32) if x.dtype != mx.float32 else x


def matmul(a: mx.array, b: mx.array) -> mx.array:
    """``a @ b``; float16/bfloat16 operands are multiplied in float32 (BLAS) and rounded back."""
    if a.dtype in _HALF:
        return (_f32(a) @ _f32(b)).astype(a.dtype)
    return a @ b


# ---------------------------------------------------------------------------- elementwise

_ROUND = 12582912.0  # 1.5 * 2**23: adding it rounds a float32 in [-2**22, 2**22] to an integer
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # Cody-Waite split of ln 2 (n * _LN2_HI is exact)
# Cephes expf: exp(r) = 1 + r + r^2 * P(r) on |r| <= ln(2) / 2. (A degree-5 fit with two fewer
# operations measured 1.6x slower once compiled: the fused kernels split differently.)
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp_nonpositive(x: mx.array) -> mx.array:
    """``exp(x)`` for float32 ``x <= 0`` (softmax after max subtraction), relative error < 2e-7.

    exp(x) = 2**n * exp(r), n = round(x / ln 2): the polynomial gives exp(r) and the exponent
    bits of 2**n are written directly. Below -87 the result is the smallest normal float.
    """
    x = mx.maximum(x, -87.0)
    t = mx.stop_gradient(x * 1.4426950408889634 + _ROUND)  # round(x / ln 2) in the low mantissa bits
    n = t - _ROUND  # piecewise constant: the gradient flows through r only, d exp(r) / dx = exp(x)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = _EXP_P[0]
    for c in _EXP_P[1:]:
        p = p * r + c
    p = p * r * r + r + 1.0
    two_n = ((t.view(mx.int32) - (0x4B400000 - 127)) << 23).view(mx.float32)
    return p * two_n


# Rational approximation erf(x) = x * P(x^2) / Q(x^2) on [-4, 4] (Eigen's float erf).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def erf(x: mx.array) -> mx.array:
    """float32 erf from multiplies and one division; max absolute error 4e-7."""
    x = mx.clip(x, -4.0, 4.0)
    x2 = x * x
    p = _ERF_P[0]
    for c in _ERF_P[1:]:
        p = p * x2 + c
    q = _ERF_Q[0]
    for c in _ERF_Q[1:]:
        q = q * x2 + c
    return x * p / q


@mx.compile
def _gelu_cpu(x: mx.array) -> mx.array:
    y = _f32(x)
    return (y * (0.5 + 0.5 * erf(y * (1 / math.sqrt(2))))).astype(x.dtype)


def gelu(x: mx.array) -> mx.array:
    """GELU with the exact (erf) formula, like ``nn.gelu`` / PyTorch's default, in float32."""
    return _gelu_cpu(x)


# ---------------------------------------------------------------------------- attention

_BLOCK = 1 << 18  # score elements per block (1 MiB of float32: one core's L2)


@mx.compile
def _unnormalized_softmax(s: mx.array) -> mx.array:
    # Compiled: one fused pass over the block instead of ~20 (1.4-2x faster attention, measured).
    return exp_nonpositive(s - mx.max(s, axis=-1, keepdims=True))


def _softmax_attention(q, k_t, v, mask):
    """softmax(q @ k_t + mask) @ v for one block of query rows, normalised after the product."""
    s = q @ k_t
    if mask is not None:
        s = s + mask
    e = _unnormalized_softmax(s)
    return (e @ v) / mx.sum(e, axis=-1, keepdims=True)


def _mask4(mask: mx.array | None) -> mx.array | None:
    if mask is None:
        return None
    mask = _f32(mask)
    while mask.ndim < 4:
        mask = mask[None]
    return mask


def _blocked_attention(q, k, v, mask=None):
    """softmax(q @ k^T + mask) @ v in MLX ops, head by head in L2-sized blocks of query rows."""
    heads, n = q.shape[1:3]
    rows = max(16, _BLOCK // max(k.shape[2], 1))
    out = []
    for h in range(heads):
        qh, kh_t, vh = q[:, h : h + 1], k[:, h : h + 1].swapaxes(-1, -2), v[:, h : h + 1]
        mh = None if mask is None else mask[:, h : h + 1] if mask.shape[1] > 1 else mask
        blocks = []
        for r in range(0, n, rows):
            mr = None if mh is None else mh[:, :, r : r + rows] if mh.shape[2] > 1 else mh
            blocks.append(_softmax_attention(qh[:, :, r : r + rows], kh_t, vh, mr))
        out.append(blocks[0] if len(blocks) == 1 else mx.concatenate(blocks, axis=2))
    return out[0] if len(out) == 1 else mx.concatenate(out, axis=1)


# Threaded softmax: MLX's CPU backend runs elementwise work on one thread with scalar code
# (~2-4 ns per score element here); NumPy's float32 exp is vectorised (~0.3 ns) and releases
# the GIL, so the scores are computed by MLX's BLAS, exponentiated in place by NumPy on every
# core, and multiplied by V in MLX again.
THREADED_MIN_SCORES = 1 << 16  # below this many scores per call the MLX path is as fast
_CHUNK = 1 << 24  # score elements evaluated at a time (64 MiB of float32)
_ROW_BLOCK = 1 << 16  # score elements per NumPy call (256 KiB, stays in L2)
_pool = None  # None: not made yet; False: one thread (no pool)
_threads = 1


def set_threads(n: int | None = None) -> None:
    """Threads for the attention softmax; default: as many as the BLAS uses (``DPT_MLX_BLAS_THREADS``)."""
    global _pool, _threads
    from concurrent.futures import ThreadPoolExecutor

    from .blas import blas_info
    from .providers import cpu_count

    if n is None:
        n = blas_info().get("threads") or cpu_count()
    n = _threads = max(1, min(int(n), 16))
    old, _pool = _pool, (ThreadPoolExecutor(max_workers=n, thread_name_prefix="dpt_mlx_softmax") if n > 1 else False)
    if old:
        old.shutdown(wait=False)


def _workers():
    if _pool is None:
        set_threads()
    return _pool


def _unnormalized_softmax_rows(s, den, lo: int, hi: int) -> None:
    """In place on rows lo:hi of the 2-D float32 NumPy array ``s``: exp(s - row max); row sums into ``den``."""
    import numpy as np

    step = max(1, _ROW_BLOCK // s.shape[1])
    for r in range(lo, hi, step):
        e = min(hi, r + step)
        blk = s[r:e]
        np.subtract(blk, blk.max(axis=1, keepdims=True), out=blk)
        np.exp(blk, out=blk)
        blk.sum(axis=1, out=den[r:e])


def _softmax_product(s: mx.array, v: mx.array) -> mx.array:
    """softmax(s) @ v for (G, N, M) scores, the softmax by NumPy threads (evaluates ``s``)."""
    import numpy as np

    mx.eval(s)
    a = np.asarray(s)  # MLX's own buffer of the freshly computed scores: written in place
    inplace = a.flags.c_contiguous and a.flags.writeable
    if not inplace:
        a = np.array(a, dtype=np.float32)
    flat = a.reshape(-1, a.shape[-1])
    den = np.empty(flat.shape[0], np.float32)
    pool = _workers()
    if pool:
        cuts = [flat.shape[0] * i // _threads for i in range(_threads + 1)]
        spans = [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]
        list(pool.map(lambda span: _unnormalized_softmax_rows(flat, den, *span), spans))
    else:
        _unnormalized_softmax_rows(flat, den, 0, flat.shape[0])
    e = s if inplace else mx.array(a)
    return (e @ v) / mx.array(den).reshape(*s.shape[:-1], 1)


def _threaded_forward(q, k, v, mask=None):
    b, heads, n, _ = q.shape
    group = max(1, min(heads, _CHUNK // max(n * k.shape[2], 1)))
    out = []
    for i in range(b):
        mb = None if mask is None else mask[i if mask.shape[0] > 1 else 0]
        for h in range(0, heads, group):
            s = q[i, h : h + group] @ k[i, h : h + group].swapaxes(-1, -2)
            if mb is not None:
                s = s + (mb[h : h + group] if mb.shape[0] > 1 else mb)
            out.append(_softmax_product(s, v[i, h : h + group]))
    out = out[0] if len(out) == 1 else mx.concatenate(out, axis=0)
    return out.reshape(b, heads, n, v.shape[-1])


@mx.custom_function
def _threaded(q, k, v, mask=None):
    return _threaded_forward(q, k, v, mask)


@_threaded.vjp
def _threaded_vjp(primals, cotangent, output):
    # Gradients through the MLX formulation: the NumPy forward is invisible to autodiff.
    _, grads = mx.vjp(_blocked_attention, list(primals), [cotangent])
    return tuple(grads)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None = None) -> mx.array:
    """``mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)`` for (B, heads, N, d).

    ``mask`` is additive and broadcasts to (B, heads, N, N). On the CPU the scores are computed
    in float32 by BLAS and their softmax runs on every core (NumPy, in place); gradients, and
    calls inside ``mx.compile`` / ``mx.vmap`` (which cannot evaluate), use MLX ops head by head
    in blocks of query rows that fit in L2.
    """
    dtype = q.dtype
    q, k, v = _f32(q) * scale, _f32(k), _f32(v)
    mask = _mask4(mask)
    if q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] >= THREADED_MIN_SCORES:
        args = (q, k, v) if mask is None else (q, k, v, mask)
        try:
            return _threaded(*args).astype(dtype)
        except ValueError as exc:  # inside mx.compile / mx.vmap: no evaluation allowed
            if "eval" not in str(exc):
                raise
    return _blocked_attention(q, k, v, mask).astype(dtype)


# ---------------------------------------------------------------------------- convolutions


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d_stride1(x: mx.array, weight: mx.array, bias: mx.array | None, padding: tuple[int, int]) -> mx.array:
    """Stride-1, undilated, ungrouped NHWC conv2d (float32) as kH * kW matrix products, no im2col.

    The padded batch is flattened to (B * rows * Wp, C) with Wp = W + 2 * pw. On that layout the
    tap (dy, dx) of output pixel (b, i, j) reads flat row p + dy * Wp + dx, p = (b * rows + i) * Wp + j:
    one contiguous slice per tap, so each tap is a plain (M, C) @ (C, O) product accumulated with
    ``addmm``. Outputs at padding columns and rows are computed and dropped (a strided view).
    MLX's CPU conv instead copies a (B * oh * ow, kH * kW * C) im2col matrix first.
    """
    b, h, w, c = x.shape
    o, kh, kw, _ = weight.shape
    ph, pw = padding
    oh, ow, wp = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1, w + 2 * pw
    extra = 1 if kw > 1 else 0  # one more zero row per image keeps every tap of its outputs inside it
    rows = h + 2 * ph + extra
    if ph or pw or extra:
        x = mx.pad(x, [(0, 0), (ph, ph + extra), (pw, pw), (0, 0)])
    flat = x.reshape(b * rows * wp, c)
    m = b * rows * wp - (kh - 1) * wp - (kw - 1)  # every output position whose taps stay in the array
    out = None if bias is None else mx.broadcast_to(bias.astype(mx.float32), (m, o))
    for dy in range(kh):
        for dx in range(kw):
            start = dy * wp + dx
            tap, wt = flat[start : start + m], weight[:, dy, dx].T  # (M, C), (C, O)
            out = tap @ wt if out is None else mx.addmm(out, tap, wt)
    # image b's outputs start at flat row b * rows * Wp: (B, oh, ow, O) as a view
    return mx.as_strided(out, (b, oh, ow, o), (rows * wp * o, wp * o, o, 1))
