"""What the flow studies' sweep tasks share: default parameters, the model of a task, a checked solve.

Each task integrates a batch of independent systems with :func:`integrators.solve`
and returns small measurements; all randomness (initial tokens, random Q, K, V)
comes from the task seed. A diverging integration (a non-finite state, e.g. USA
with an overflowing exp(beta <.,.>)) raises, so the sweep records the task as
failed with its error.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794, Fig. 5 (random Q, K, V).
"""

from __future__ import annotations

import numpy as np

from studies.sweep.devices import backend_device
from studies.sweep.worker import ProgressWriter

__all__ = ["CHECKED", "FLOW_DEFAULTS", "build_model", "random_qkv", "solve_checked", "validate"]

#: Parameters every flow task has, with their defaults.
FLOW_DEFAULTS = {"n": 32, "d": 8, "beta": 1.0, "dt": 0.1, "method": "euler", "backend": "numba", "batch": 64, "normalization": "sa"}


def random_qkv(d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q, K, V as in the authors' random phase diagrams (GLPR Fig. 5).

    Q^T K = G1 G2 / sqrt(d) (a product of Gaussian matrices) and
    V = G3 G3^T / sqrt(d) (symmetric positive semi-definite), G_k iid N(0, 1).
    """
    g1, g2, g3 = (rng.standard_normal((d, d)) for _ in range(3))
    s = d ** -0.25
    return g1.T * s, g2 * s, g3 @ g3.T / np.sqrt(d)


def build_model(p: dict, rng: np.random.Generator):
    from particles import SelfAttention

    if p.get("qkv", "identity") == "random":
        q, k, v = random_qkv(p["d"], rng)
        return SelfAttention(beta=p["beta"], Q=q, K=k, V=v, normalization=p["normalization"])
    if p.get("qkv", "identity") != "identity":
        raise ValueError(f"qkv must be 'identity' or 'random', got {p['qkv']!r}")
    return SelfAttention(beta=p["beta"], normalization=p["normalization"])


def validate(p: dict) -> None:
    """What the task would reject when it runs, checked at spec time (once per distinct model).

    Builds the model as the task does and checks the integration settings ``solve``
    checks. Random Q, K, V are replaced by identities of the same shape: only their
    shapes matter here, and drawing d x d products at every grid point would make
    checking a large grid cost seconds.
    """
    from integrators import BACKENDS
    from integrators.registry import get_stepper
    from integrators.validation import ParameterError, check_choice, check_positive, check_positive_int

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
    check_choice("qkv", p.get("qkv", "identity"), ("identity", "random"))
    if p.get("qkv", "identity") == "random":
        from particles import SelfAttention

        eye = np.eye(p["d"])
        SelfAttention(beta=p["beta"], Q=eye, K=eye, V=eye, normalization=p["normalization"])
    else:
        build_model(p, np.random.default_rng(0))


#: spec-time validation of every flow task; the parameters it depends on
CHECKED = {"validate": validate,
           "validate_keys": ("dt", "backend", "method", "n", "d", "batch", "n_save", "t_end", "t_max", "beta",
                             "normalization", "qkv")}


def solve_checked(model, x0, p: dict, t_end: float, save_at, observables: dict, t0: float = 0.0, save_states: bool = False,
           horizon: float | None = None):
    from integrators import solve

    # on the torch backend the task runs on the GPU its sweep worker was given (none: the CPU, as before)
    sol = solve(model, x0, t_end, t0=t0, dt=p["dt"], method=p["method"], backend=p["backend"],
                device=backend_device(p["backend"]), save_at=save_at, save_states=save_states, observables=observables,
                exit_threshold=10.0, writer=ProgressWriter(horizon or t_end))
    if sol.exited.any():
        k = int(sol.exited.sum())
        raise FloatingPointError(f"dynamics diverged: {k} of {sol.exited.size} systems left the sphere "
                                 f"(first at t = {np.nanmin(sol.exit_time):.4g})")
    return sol

