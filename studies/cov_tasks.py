"""Sweep task for the covariance study: finite shaped transformers against the block SDE.

One grid point (width n, depth-to-width ratio T = d/n, gamma, tau0, rho0, m tokens,
sample count, SDE step) draws ``samples`` outputs of the exact finite-width chain of
a shaped transformer of depth d = round(T n) (:class:`particles.covariance.FiniteWidthChain`)
and ``samples`` paths of the shaped-block covariance SDE to time T (PSD-projected
Euler-Maruyama at dt and at dt/10 on the same Brownian path, via
:func:`studies.cov_study._sde_samples`), and compares the laws of the output
correlation rho^{12}_T = V^{12}_T / sqrt(V^{11}_T V^{22}_T) and of the diagonal V^{11}_T.

The comparison is the one of ``attnflow study cov`` (:mod:`studies.cov_study`), one
width per task, so widths and seeds can be swept, resumed and spread over workers.
SDE paths that leave the state space (``exit_threshold``; an exploding PSD-Euler path)
are counted in ``sde_exit_fraction`` and left out of the SDE statistics; a task where
fewer than two SDE paths survive fails with its error.

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759, Fig. 1 and section 4
(eq. for the shaped-block covariance SDE; KS distance of finite networks to the SDE).
"""

from __future__ import annotations

import math

import numpy as np

from .tasks import register_task

__all__ = ["rho_law"]

_DEFAULTS = {
    "n": 64,
    "T": 0.5,
    "gamma": 1 / math.sqrt(8),
    "tau0": 1.0,
    "rho0": 0.2,
    "m": 3,
    "samples": 512,
    "dt": 0.02,
}


def _check(p: dict) -> None:
    """Errors naming the parameter (raised inside the task, so the sweep records them)."""
    from particles.validation import (
        ParameterError,
        check_in_range,
        check_positive,
        check_positive_int,
    )

    check_positive_int("n", p["n"])
    check_positive("T", p["T"])
    check_positive("tau0", p["tau0"])
    check_positive("dt", p["dt"])
    check_positive_int("m", p["m"], minimum=2)  # rho^12 needs two tokens
    check_positive_int("samples", p["samples"], minimum=2)  # a KS statistic needs two samples
    # V0 = (1 - rho0) I + rho0 1 1^T is PSD iff -1/(m - 1) <= rho0 <= 1
    check_in_range("rho0", p["rho0"], -1.0 / (p["m"] - 1), 1.0)
    if p["n"] < p["m"]:
        raise ParameterError("n", f"the exact chain needs width n >= m tokens: n={p['n']}, m={p['m']}")
    if p["dt"] > p["T"]:
        raise ParameterError("dt", f"SDE step {p['dt']} exceeds the horizon T = {p['T']}")


def _rho12(V: np.ndarray) -> np.ndarray:
    return V[:, 0, 1] / np.sqrt(V[:, 0, 0] * V[:, 1, 1])


@register_task(
    "cov.rho_law",
    defaults=_DEFAULTS,
    validate=_check,  # also at spec time: every distinct (n, T, dt, ...) before any task runs
)
def rho_law(p: dict, seed: int) -> dict:
    """KS distance and moments of rho^{12}_T and V^{11}_T: exact finite-width chain vs block SDE.

    V0 = (1 - rho0) I + rho0 1 1^T (m x m); the chain runs depth round(T n) >= 1 blocks
    (its horizon ``t_chain`` = depth / n is returned: it differs from T when T n is not
    an integer), the SDE runs to T. Measurements, suffix ``_chain`` / ``_sde``:
    ``rho12_mean``, ``rho12_var``, ``V11_mean``, ``V11_var`` (unbiased variance), and
    ``ks_rho12``, ``ks_rho12_pvalue``, ``ks_V11``, ``ks_V11_pvalue`` (two-sample KS, chain vs
    SDE at dt), ``ks_rho12_sde_dt`` (SDE at dt vs dt/10 on the same noise: the
    discretisation check), ``sde_exit_fraction`` (paths exploding at dt or dt/10),
    ``sde_paths_used``, ``depth``, ``t_chain``.
    """
    from scipy import stats

    from particles.covariance import FiniteWidthChain
    from particles.networks import ShapedTransformer

    from .cov_study import CovStudySize, _sde_samples

    _check(p)
    n, m, samples = p["n"], p["m"], p["samples"]
    chain_seed, sde_seed = (int(s) for s in np.random.default_rng(seed).integers(0, 2**62, size=2))
    V0 = (1 - p["rho0"]) * np.eye(m) + p["rho0"] * np.ones((m, m))

    # the study's own SDE sampler (dt and dt/10 on one Brownian path); the width and
    # collapse fields of its size record are not used by it
    size = CovStudySize(widths=(n,), T=p["T"], m=m, samples=samples, plain_width=n, plain_samples=0,
                        sde_paths=samples, dt=p["dt"], collapse_n=n, collapse_layers=1, collapse_batch=1,
                        collapse_batch_preln=1, gamma=p["gamma"], tau0=p["tau0"], rho0=p["rho0"])  # fmt: skip
    _, sols = _sde_samples(size, V0, seed=sde_seed, progress=False)
    ok = ~(np.asarray(sols["dt"].exited) | np.asarray(sols["dt/10"].exited))
    if ok.sum() < 2:
        raise FloatingPointError(f"SDE diverged: {int((~ok).sum())} of {ok.size} paths exploded (dt = {p['dt']})")
    Vs = sols["dt"].final[ok]
    rho_sde, d_sde = _rho12(Vs), Vs[:, 0, 0]
    rho_fine = _rho12(sols["dt/10"].final[ok])

    depth = max(1, round(p["T"] * n))
    res = FiniteWidthChain(ShapedTransformer(n, p["gamma"], p["tau0"])).run(
        V0, depth, seed=chain_seed, batch=samples, record_every=depth)
    Vc = res.final
    rho_c, d_c = _rho12(Vc), Vc[:, 0, 0]
    if not (np.isfinite(rho_c).all() and np.isfinite(d_c).all()):
        raise FloatingPointError(f"finite-width chain produced non-finite V at n = {n}")

    ks_r, ks_d = stats.ks_2samp(rho_c, rho_sde), stats.ks_2samp(d_c, d_sde)
    out = {
        "ks_rho12": ks_r.statistic, "ks_rho12_pvalue": ks_r.pvalue,
        "ks_V11": ks_d.statistic, "ks_V11_pvalue": ks_d.pvalue,
        "ks_rho12_sde_dt": stats.ks_2samp(rho_sde, rho_fine).statistic,
        "sde_exit_fraction": float(1.0 - ok.mean()), "sde_paths_used": int(ok.sum()),
        "depth": depth, "t_chain": depth / n,
    }  # fmt: skip
    for label, r, d in (("chain", rho_c, d_c), ("sde", rho_sde, d_sde)):
        out[f"rho12_mean_{label}"] = r.mean()
        out[f"rho12_var_{label}"] = r.var(ddof=1)
        out[f"V11_mean_{label}"] = d.mean()
        out[f"V11_var_{label}"] = d.var(ddof=1)
    return out
