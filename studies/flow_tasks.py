"""Sweep tasks for the self-attention flow on the sphere (GLPR, META).

Each task integrates a batch of independent systems with
:func:`integrators.solve` and returns small measurements; all randomness (initial
tokens, random Q, K, V) comes from the task seed. A diverging integration (a
non-finite state, e.g. USA with an overflowing exp(beta <.,.>)) raises, so the
sweep records the task as failed with its error.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794: Fig. 3 (phase diagram), Fig. 4 (d = 2),
Fig. 5 (random Q, K, V), Thm 6.8 and 6.9 (equiangular ODE, high dimension).
Geshkovski, Koubbi, Polyanskiy, Rigollet, arXiv:2410.06833 (energy staircase).
"""

from __future__ import annotations

import numpy as np

from particles.flow_theory import equiangular_hitting_time, equiangular_solution, two_cluster_merge_time
from .sweep.worker import ProgressWriter
from .tasks import register_task

__all__ = ["phase_point", "trajectory", "two_caps", "collapse", "high_dim", "random_qkv"]

_COMMON = {"n": 32, "d": 8, "beta": 1.0, "dt": 0.1, "method": "euler", "backend": "numba", "batch": 64, "normalization": "sa"}


def random_qkv(d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q, K, V as in the authors' random phase diagrams (GLPR Fig. 5).

    Q^T K = G1 G2 / sqrt(d) (a product of Gaussian matrices) and
    V = G3 G3^T / sqrt(d) (symmetric positive semi-definite), G_k iid N(0, 1).
    """
    g1, g2, g3 = (rng.standard_normal((d, d)) for _ in range(3))
    s = d ** -0.25
    return g1.T * s, g2 * s, g3 @ g3.T / np.sqrt(d)


def _model(p: dict, rng: np.random.Generator):
    from particles import SelfAttention

    if p.get("qkv", "identity") == "random":
        q, k, v = random_qkv(p["d"], rng)
        return SelfAttention(beta=p["beta"], Q=q, K=k, V=v, normalization=p["normalization"])
    if p.get("qkv", "identity") != "identity":
        raise ValueError(f"qkv must be 'identity' or 'random', got {p['qkv']!r}")
    return SelfAttention(beta=p["beta"], normalization=p["normalization"])


def validate(p: dict) -> None:
    """What the task would reject when it runs, checked at spec time (once per distinct model).

    Builds the model as the task does (random Q, K, V from a fixed seed: only
    their shapes matter here) and checks the integration settings ``solve`` checks.
    """
    from integrators import BACKENDS
    from integrators.registry import get_stepper
    from particles.validation import ParameterError, check_choice, check_positive, check_positive_int

    check_positive("dt", p["dt"])
    check_choice("backend", p["backend"], BACKENDS)
    if get_stepper(p["method"]).kind != "ode":
        raise ParameterError("method", f"{p['method']!r} is an SDE stepper but the flow has no noise")
    for key in ("n", "d", "batch", "n_save"):
        if key in p:
            check_positive_int(key, p[key])
    for key in ("t_end", "t_max"):
        if key in p:
            check_positive(key, p[key])
    _model(p, np.random.default_rng(0))


#: spec-time validation of every flow task; the parameters it depends on
_CHECKED = {"validate": validate,
            "validate_keys": ("dt", "backend", "method", "n", "d", "batch", "n_save", "t_end", "t_max", "beta",
                              "normalization", "qkv")}


def _solve(model, x0, p: dict, t_end: float, save_at, observables: dict, t0: float = 0.0, save_states: bool = False,
           horizon: float | None = None):
    from integrators import solve

    sol = solve(model, x0, t_end, t0=t0, dt=p["dt"], method=p["method"], backend=p["backend"], save_at=save_at,
                save_states=save_states, observables=observables, exit_threshold=10.0,
                writer=ProgressWriter(horizon or t_end))
    if sol.exited.any():
        k = int(sol.exited.sum())
        raise FloatingPointError(f"dynamics diverged: {k} of {sol.exited.size} systems left the sphere "
                                 f"(first at t = {np.nanmin(sol.exit_time):.4g})")
    return sol


@register_task(
    "flow.phase_point",
    defaults={**_COMMON, "t_end": 30.0, "n_save": 61, "delta": 1e-3, "qkv": "identity"},
    dims={"t": ("t",), "P": ("t",), "collapsed": ("t",), "g_theory": ("t",)},
    **_CHECKED,
)
def phase_point(p: dict, seed: int) -> dict:
    """P(t) = mean fraction of pairs i != j with <x_i, x_j> >= 1 - delta over ``batch`` uniform starts.

    Also the fraction of systems fully collapsed (P = 1) and the equiangular ODE
    g(t) from g(0) = 0 (the high-dimensional prediction, GLPR Thm 6.9).
    """
    from particles import fraction_close_pairs, uniform_sphere

    rng = np.random.default_rng(seed)
    model = _model(p, rng)
    x0 = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_end"], p["n_save"])
    delta = p["delta"]
    sol = _solve(model, x0, p, p["t_end"], t, {"P": lambda x, m: fraction_close_pairs(x, delta=delta)})
    frac = sol.observables["P"]  # (time, batch)
    return {"t": t, "P": frac.mean(axis=1), "collapsed": (frac >= 1.0).mean(axis=1),
            "g_theory": equiangular_solution(t, p["beta"], p["n"])}


def _cluster_levels(x: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Cluster counts and the staircase level sum_q (m_q / n)^2 of each system, (batch,) each."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = x.shape[-2]
    counts = np.empty(x.shape[0], dtype=np.int64)
    level = np.empty(x.shape[0])
    for b, g in enumerate(x @ np.swapaxes(x, -1, -2)):
        k, lab = connected_components(csr_matrix(g > 1.0 - delta), directed=False)
        counts[b] = k
        level[b] = float(np.sum((np.bincount(lab) / n) ** 2))
    return counts, level


@register_task(
    "flow.trajectory",
    defaults={**_COMMON, "d": 2, "beta": 4.0, "method": "rk4", "batch": 8, "t_end": 60.0, "n_save": 301, "delta": 1e-3},
    dims={"t": ("t",), "clusters": ("t", "system"), "energy": ("t", "system"), "level": ("t", "system")},
    **_CHECKED,
)
def trajectory(p: dict, seed: int) -> dict:
    """Cluster count, normalised energy (1/n^2) sum e^{beta(<x_i,x_j> - 1)} and its staircase level over time.

    The level sum_q (m_q/n)^2 uses the clusters of the graph <x_i, x_j> > 1 - delta;
    on a metastable plateau the energy sits just above it (META).
    """
    from particles import normalized_energy, uniform_sphere

    rng = np.random.default_rng(seed)
    model = _model(p, rng)
    x0 = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_end"], p["n_save"])
    delta, beta = p["delta"], p["beta"]
    obs = {
        "cl": lambda x, m: np.stack(_cluster_levels(x, delta), axis=1),
        "energy": lambda x, m: normalized_energy(x, beta=beta),
    }
    sol = _solve(model, x0, p, p["t_end"], t, obs)
    cl = sol.observables["cl"]  # (time, batch, 2)
    return {"t": t, "clusters": cl[..., 0].astype(np.int64), "level": cl[..., 1], "energy": sol.observables["energy"]}


def _two_caps_state(p: dict, rng: np.random.Generator) -> np.ndarray:
    """(batch, m1 + m2, d): two caps of angular radius ``cap`` whose centres have inner product rho0."""
    d, m1, m2, batch = p["d"], p["m1"], p["m2"], p["batch"]
    c1 = np.zeros(d)
    c1[0] = 1.0
    c2 = np.zeros(d)
    c2[0], c2[1] = p["rho0"], np.sqrt(1.0 - p["rho0"] ** 2)
    centres = np.concatenate([np.repeat(c1[None], m1, 0), np.repeat(c2[None], m2, 0)])
    x = centres[None] + p["cap"] * rng.standard_normal((batch, m1 + m2, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    # random orientation per system (the flow is rotation equivariant)
    from particles import random_rotation

    return np.stack([xb @ random_rotation(d, rng).T for xb in x])


def _centre_ip(m1: int):
    def fn(x, model=None):
        a = x[:, :m1].sum(axis=1)
        b = x[:, m1:].sum(axis=1)
        return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    return fn


@register_task(
    "flow.two_caps",
    defaults={**_COMMON, "d": 2, "beta": 4.0, "method": "rk4", "backend": "numpy", "batch": 4, "m1": 16, "m2": 16,
              "rho0": 0.5, "cap": 0.02, "level": 0.99, "n_save": 2001, "horizon": 3.0},
    dims={"merge_time": ("system",)},
    **_CHECKED,
)
def two_caps(p: dict, seed: int) -> dict:
    """Merge time of two tight caps: first time the centres' inner product reaches ``level``.

    Integrated up to ``horizon`` times the two-cluster ODE prediction (returned
    as ``merge_time_theory``), with ``n_save`` save points for the crossing
    (linear interpolation between them); NaN if a system has not merged.
    """
    rng = np.random.default_rng(seed)
    model = _model({**p, "qkv": "identity"}, rng)
    x0 = _two_caps_state(p, rng)
    theory = two_cluster_merge_time(p["beta"], p["m1"], p["m2"], p["rho0"], p["level"])
    t_end = p["horizon"] * theory + 5.0
    t = np.linspace(0.0, t_end, p["n_save"])
    sol = _solve(model, x0, p, t_end, t, {"rho": _centre_ip(p["m1"])})
    rho = sol.observables["rho"]  # (time, batch)
    out = np.full(rho.shape[1], np.nan)
    for b in range(rho.shape[1]):
        hit = np.nonzero(rho[:, b] >= p["level"])[0]
        if hit.size and hit[0] > 0:
            i = hit[0]
            w = (p["level"] - rho[i - 1, b]) / (rho[i, b] - rho[i - 1, b])
            out[b] = t[i - 1] + w * (t[i] - t[i - 1])
    return {"merge_time": out, "merge_time_theory": theory}


@register_task(
    "flow.collapse",
    defaults={**_COMMON, "method": "rk4", "batch": 16, "t_max": 100.0, "n_save": 1001, "delta": 1e-3},
    dims={"collapse_time": ("system",)},
    **_CHECKED,
)
def collapse(p: dict, seed: int) -> dict:
    """Time until every pair is within 1 - delta (P = 1), per system (NaN if beyond ``t_max``).

    With the equiangular-ODE time g_beta(t) = 1 - delta from g(0) = 0 as ``t_theory``.
    """
    from particles import fraction_close_pairs, uniform_sphere
    from particles.observables import collapse_time

    rng = np.random.default_rng(seed)
    model = _model(p, rng)
    x = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_max"], p["n_save"])
    delta = p["delta"]
    frac = np.ones((len(t), x.shape[0]))
    frac[0] = fraction_close_pairs(x, delta=delta)
    # Integrate in segments of 20 save intervals and stop once every system has collapsed
    # (a collapsed SA configuration stays collapsed: it lies in a shrinking cap).
    i = 0
    while i < len(t) - 1 and frac[i].min() < 1.0:
        j = min(i + 20, len(t) - 1)
        sol = _solve(model, x, p, t[j], t[i + 1:j + 1], {"P": lambda y, m: fraction_close_pairs(y, delta=delta)},
                     t0=t[i], save_states=True, horizon=p["t_max"])
        frac[i + 1:j + 1] = sol.observables["P"]
        x, i = sol.x[-1], j
    return {"collapse_time": collapse_time(t, frac), "t_theory": equiangular_hitting_time(p["beta"], p["n"], delta)}


@register_task(
    "flow.high_dim",
    defaults={**_COMMON, "d": 512, "method": "rk4", "dt": 0.05, "batch": 4, "t_end": 6.0, "n_save": 7, "bins": 80},
    dims={"t": ("t",), "hist": ("t", "bin"), "bin": ("bin",), "ip_mean": ("t",), "ip_std": ("t",), "g_theory": ("t",)},
    **_CHECKED,
)
def high_dim(p: dict, seed: int) -> dict:
    """Histogram (density on [-1, 1]) of all pairwise inner products at saved times, vs the ODE g(t).

    GLPR Thm 6.9: for n fixed and d large, every <x_i(t), x_j(t)> is close to
    g(t) (equiangular ODE from g(0) = 0), with fluctuations of order d^{-1/2}.
    """
    from particles import pair_inner_products, uniform_sphere

    rng = np.random.default_rng(seed)
    model = _model(p, rng)
    x0 = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_end"], p["n_save"])
    edges = np.linspace(-1.0, 1.0, p["bins"] + 1)
    sol = _solve(model, x0, p, p["t_end"], t, {"ip": lambda x, m: pair_inner_products(x)})
    ip = sol.observables["ip"].reshape(len(t), -1)  # (time, batch * pairs)
    hist = np.stack([np.histogram(np.clip(r, -1, 1), bins=edges, density=True)[0] for r in ip])
    return {"t": t, "hist": hist, "bin": 0.5 * (edges[1:] + edges[:-1]), "ip_mean": ip.mean(axis=1),
            "ip_std": ip.std(axis=1), "g_theory": equiangular_solution(t, p["beta"], p["n"])}
