"""Low-level pieces shared by the Numba attention kernels.

* :func:`fexp` -- an exponential that LLVM can vectorise (AVX2 / AVX-512).
  ``math.exp`` inside a Numba loop is a scalar libm call and costs as much as
  the two matrix products of an attention evaluation together; this one is a
  Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, a degree-13 Taylor
  polynomial for e^r (truncation < 2e-17 relative) and 2^k written straight
  into the exponent bits. Measured error: < 2e-15 relative for results in the
  normal range; results below 2.2e-308 are flushed to zero (they never matter
  next to a softmax maximum of 1) and arguments above 709.78 give +inf, as
  ``np.exp`` does.
* :data:`gemm` -- BLAS ``?gemm`` (scipy's BLAS, the one ``np.dot`` uses inside
  Numba) called through Numba's own exported helper ``numba_xxgemm``. Calling
  it by symbol name keeps ``cache=True`` working (a ctypes pointer would not),
  and it exposes what ``np.dot`` hides: leading dimensions (sub-blocks without
  copies), transposition flags, and ``C = alpha A B + beta C`` accumulation.
* :func:`wide_vectors` -- marks a kernel for 512-bit vectors on AVX-512 CPUs.
* :func:`blas_single_thread` -- kernels that call :data:`gemm` from ``prange``
  workers must run BLAS single-threaded, or each worker's GEMM spawns its own
  BLAS threads and the two pools fight over the cores (measured 2-3x slower).

References
----------
Cody & Waite, "Software Manual for the Elementary Functions" (1980), ch. 6.
"""

from __future__ import annotations

import contextlib
import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["FASTMATH", "blas_single_thread", "ensure_gemm", "fexp", "gemm", "wide_vectors"]

#: LLVM fast-math flags of every kernel: contraction into FMAs and
#: reassociation (so reductions vectorise), but no "no-NaN"/"no-inf"
#: assumptions: the kernels use -inf as the empty maximum and must propagate
#: NaN states so that ``solve`` can flag exploding paths.
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}

_LOG2E = 1.4426950408889634
# ln 2 split so that k * _LN2_HI is exact for |k| < 2^20 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_EXP_MAX = 709.782712893384
_EXP_MIN = -708.3964185322641  # log of the smallest normal double


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the calling function with 512-bit registers where the CPU has them.

    LLVM's tuning for AVX-512 CPUs prefers 256-bit vectors (the "prefer-256-bit"
    feature, chosen because early AVX-512 parts lowered their clock under 512-bit
    work); the per-system kernels are nothing but fused multiply-adds on rows of
    d = 64 ... 256 numbers, which run 15% faster per system-step with 512-bit
    vectors (measured on the ensemble 32 x 128 step, 13.2 -> 11.1 us on one core of
    an AVX-512 Xeon). The call marks the LLVM function it is lowered into with
    ``"prefer-vector-width"="512"``, the attribute clang's ``-mprefer-vector-width``
    sets; on CPUs without AVX-512 the legal width (256 or 128) still caps it. A
    Numba function compiled into a separate LLVM function (not inlined by Numba)
    needs its own call: its loops are vectorised before they are linked.
    """
    sig = types.none()

    def codegen(context, builder, signature, args):
        # llvmlite's attribute set only admits names it knows; a string attribute goes in as is
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _as_bits(typingctx, x):
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _from_bits(typingctx, i):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


# Only contraction into FMAs here: reassociation would merge the Cody-Waite
# split (y - k ln2_hi) - k ln2_lo back into y - k ln2 and cost ~k ulps.
@nb.njit(fastmath={"contract"}, cache=True)
def fexp(x):
    """exp(x) in float64, branch-free so that loops over it vectorise."""
    y = min(max(x, _EXP_MIN), _EXP_MAX)
    k = math.floor(y * _LOG2E + 0.5)
    r = (y - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    # p in [0.7, 1.42]: adding k to its exponent field is p * 2^k, exact and
    # in range for every k reachable from [_EXP_MIN, _EXP_MAX].
    e = _from_bits(_as_bits(p) + (np.int64(k) << 52))
    if x < _EXP_MIN:
        e = 0.0
    if x > _EXP_MAX:
        e = np.inf
    if math.isnan(x):
        e = x
    return e


def _gemm_signature():
    ptr = types.voidptr
    return types.intc(
        types.char,  # kind: 'd' or 's'
        types.char,  # transa
        types.char,  # transb
        types.intp,  # m
        types.intp,  # n
        types.intp,  # k
        ptr,  # alpha
        ptr,  # a
        types.intp,  # lda
        ptr,  # b
        types.intp,  # ldb
        ptr,  # beta
        ptr,  # c
        types.intp,  # ldc
    )


#: Column-major BLAS gemm, C = alpha op(A) op(B) + beta C. Row-major callers
#: compute C^T = op(B)^T op(A)^T, i.e. swap the operands.
gemm = types.ExternalFunction("numba_xxgemm", _gemm_signature())


@nb.njit(cache=True)
def _touch_gemm(a, b, c):
    one = np.ones(1, dtype=a.dtype)
    kind = ord("d") if a.itemsize == 8 else ord("s")
    gemm(kind, ord("N"), ord("N"), 1, 1, 1, one.ctypes, a.ctypes, 1, b.ctypes, 1, one.ctypes, c.ctypes, 1)


_GEMM_READY = False


def ensure_gemm() -> None:
    """Resolve the BLAS pointers once, from the main thread.

    ``numba_xxgemm`` imports scipy's BLAS on first use under the GIL; doing it
    from a ``prange`` worker while the main thread holds the GIL could deadlock.
    """
    global _GEMM_READY
    if not _GEMM_READY:
        from numba.np.linalg import ensure_blas

        ensure_blas()
        for dt in (np.float64, np.float32):
            a = np.ones(1, dtype=dt)
            _touch_gemm(a, a.copy(), a.copy())
        _GEMM_READY = True


_CONTROLLER = None


def blas_single_thread():
    """Context manager: BLAS libraries run one thread inside (threadpoolctl)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        ensure_gemm()  # scipy's BLAS must be loaded before the controller looks
        _CONTROLLER = ThreadpoolController()
    if not _CONTROLLER.lib_controllers:
        return contextlib.nullcontext()
    return _CONTROLLER.limit(limits=1, user_api="blas")
