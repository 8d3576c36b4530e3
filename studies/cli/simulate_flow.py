"""``attnflow simulate sa|usa|usa-meta``: the self-attention flow on the sphere.

    xdot_i = P_{x_i}( sum_h (1/Z_{i,h}) sum_j exp(beta <Q_h x_i, K_h x_j>) V_h x_j )

with Z the softmax row sum (``sa``, GLPR eq. 2.4), n (``usa``, GLPR section 3.3) or
n e^beta (``usa-meta``, META). ``--kappa`` adds Brownian motion on the sphere of
intensity sqrt(2/kappa) (MF): the noisy flow, an SDE.

Seeds: ``--seed S`` draws the initial tokens from ``numpy.random.default_rng(S)``
(so ``particles.uniform_sphere(batch, n, d, seed=S)`` reproduces them) and the
Brownian path from an independent stream, ``noise_seed`` (stored in the file).

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794, eqs. (2.3), (2.4), (2.7), section 3.3.
Rigollet, "The mean-field dynamics of transformers", arXiv:2512.01868.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from integrators.validation import ParameterError

from studies.cli.simulate import RUN_OPTIONS, run_and_store
from studies.cli.options import Option, add_options, choice, integer, load_npy, real, resolve_options, text, with_help

__all__ = ["register_models", "FLOW_OPTIONS", "MODELS", "build_model", "initial_state", "noise_seed"]

MODELS = {
    "sa": "self-attention flow, softmax normalisation (GLPR 2.3-2.4)",
    "usa": "unnormalised self-attention, Z_i = n (GLPR 3.3)",
    "usa-meta": "unnormalised self-attention, exp(beta(<x_i,x_j> - 1))/n (META)",
}
#: --method help of the flow models (the defaults are those of :func:`run`)
METHOD_HELP = ("stepper. Without --kappa (an ODE): euler, lie-euler, heun, midpoint, rk4 (the default) or dopri5 "
               "(adaptive). With --kappa (an SDE on the sphere): stratonovich-heun (the default) or euler-maruyama")
INITS = ("uniform", "orthogonal", "basis", "equiangular", "hemisphere")
HIST_BINS = 50


def _matrix(name: str, raw: Any):
    """A matrix option: "identity", "-identity", a .npy path, or (TOML) a nested list."""
    if isinstance(raw, list):
        return np.asarray(raw, dtype=float) if raw else None
    if not isinstance(raw, str):
        raise ParameterError(name, f"expected a .npy file, 'identity' or '-identity', got {raw!r}")
    return raw


FLOW_OPTIONS: tuple[Option, ...] = (
    Option("n", integer(1), 32, "number of tokens"),
    Option("d", integer(2), 3, "dimension (tokens on S^{d-1})"),
    Option("beta", real(0.0), 1.0, "inverse temperature"),
    Option("heads", integer(1), 1, "number of identical heads (when Q, K, V are not given), summed"),
    Option("causal", None, False, "causal mask: token i attends to j <= i", flag=True),
    Option("Q", _matrix, None, "query matrix: .npy file of shape (d_k, d) or (heads, d_k, d)", path=True,
           metavar="FILE"),
    Option("K", _matrix, None, "key matrix: .npy file, same shape as Q", path=True, metavar="FILE"),
    Option("V", _matrix, None, "value matrix: .npy file (d, d) or (heads, d, d), or identity / -identity",
           path=True, metavar="FILE"),
    Option("init", choice(INITS), "uniform", "initial tokens: " + ", ".join(INITS)),
    Option("g0", real(-1.0, 1.0), 0.0, "pairwise inner product of the equiangular start"),
    Option("init-file", text, None, "initial tokens from a .npy file, (n, d) or (batch, n, d)", path=True,
           metavar="FILE"),
    Option("normalize", None, False, "normalise non-unit initial tokens instead of rejecting them", flag=True),
    Option("kappa", real(0.0, strict=True), None, "add noise sqrt(2/kappa) dW on the sphere (an SDE)"),
)  # fmt: skip


def register_models(subparsers) -> None:
    for name, help_ in MODELS.items():
        p = subparsers.add_parser(name, help=help_, description=f"Simulate the {help_}; write an HDF5 run.")
        add_options(p, FLOW_OPTIONS + with_help(RUN_OPTIONS, "method", METHOD_HELP))
        p.set_defaults(func=run)


def _resolve_matrix(name: str, raw, d: int):
    if raw is None or isinstance(raw, np.ndarray):
        return raw
    if raw == "identity":
        return None
    if raw in ("-identity", "minus-identity"):
        return -np.eye(d)
    return load_npy(name, raw)


def build_model(model: str, opts: dict[str, Any], d: int):
    """The :class:`particles.SelfAttention` (or its noisy version) described by the options."""
    from particles import SelfAttention

    field = SelfAttention(
        beta=opts["beta"],
        Q=_resolve_matrix("Q", opts["Q"], d),
        K=_resolve_matrix("K", opts["K"], d),
        V=_resolve_matrix("V", opts["V"], d),
        heads=opts["heads"],
        normalization=model,
        causal=opts["causal"],
    )
    return field if opts["kappa"] is None else field.with_noise(opts["kappa"])


def initial_state(opts: dict[str, Any], given: frozenset[str]) -> tuple[np.ndarray, str]:
    """Initial tokens (batch, n, d) and a description of where they came from."""
    from particles.sphere import init as inits

    if opts["init_file"] is not None:
        if "init" in given:
            raise ParameterError("init", "give either --init or --init-file, not both")
        x = load_npy("init-file", opts["init_file"])
        x = inits.check_unit(x, name="init-file", normalize=opts["normalize"])
        if x.shape[0] == 1 and opts["batch"] > 1:
            x = np.repeat(x, opts["batch"], axis=0)  # one start, an ensemble of noise paths
        for key, size in (("batch", x.shape[0]), ("n", x.shape[1]), ("d", x.shape[2])):
            if key in given and opts[key] != size:
                raise ParameterError(key, f"--{key} {opts[key]} but the init file has {key} = {size}")
        return x, f"file:{opts['init_file']}"
    b, n, d, seed = opts["batch"], opts["n"], opts["d"], opts["seed"]
    kind = opts["init"]
    if kind == "uniform":
        x = inits.uniform_sphere(b, n, d, seed=seed)
    elif kind == "orthogonal":
        x = inits.orthogonal(b, n, d, seed=seed)
    elif kind == "basis":
        x = inits.orthogonal(b, n, d, seed=None)
    elif kind == "equiangular":
        x = inits.equiangular(b, n, d, opts["g0"], seed=seed)
    else:
        x = inits.hemisphere(b, n, d, seed=seed)
    return x, kind


def noise_seed(seed: int) -> int:
    """Seed of the Brownian path: a stream independent of ``default_rng(seed)`` used for x0.

    (SeedSequence(s) equals SeedSequence([s, 0]), the key of the first Brownian
    increment, so the same integer must not seed both.)
    """
    return int(np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1, np.uint64)[0] >> 1)


#: exp(beta <x_i, x_j>) overflows float64 beyond this beta, and with it the energy E_beta
ENERGY_MAX_BETA = float(np.log(np.finfo(np.float64).max))


def _default_observables(beta: float, states: bool) -> list[str]:
    # past ENERGY_MAX_BETA, E_beta is inf/NaN: its normalised form exp(beta(<x_i,x_j> - 1)) stays in (0, 1]
    obs = ([] if beta <= 0 else ["energy"] if beta <= ENERGY_MAX_BETA else ["normalized_energy"])
    obs += ["cluster_count", "fraction_close", "min_inner_product"]
    if not states:
        obs.append("pair_histogram")  # so that `attnflow plot` can still draw the histogram
    return obs


def _warn_unstable_step(model: str, opts: dict[str, Any]) -> None:
    # Near consensus USA contracts at rate 2 e^beta (MODELS.md section 1): explicit steps
    # blow up (or oscillate) once dt exceeds about e^-beta. SA and usa-meta contract at rate 2.
    limit = np.exp(-opts["beta"]) if model == "usa" else 1.0
    if opts["dt"] > limit:
        print(
            f"attnflow simulate: warning: dt={opts['dt']:g} exceeds the explicit stability limit ~{limit:.3g} of "
            f"{model} at beta={opts['beta']:g} near consensus; results may oscillate (use a smaller --dt)",
            file=sys.stderr,
        )


def run(args) -> int:
    opts, given = resolve_options(FLOW_OPTIONS + RUN_OPTIONS, args, fixed={"model": args.model})
    if opts["init_file"] is None:  # before drawing it: a one-line error, not an allocation traceback
        from integrators.memory import check_state_size

        check_state_size("n", (opts["batch"], opts["n"], opts["d"]))
    x0, init_desc = initial_state(opts, given)
    d = x0.shape[-1]
    model = build_model(args.model, opts, d)
    if opts["observables"] is None:
        opts["observables"] = _default_observables(opts["beta"], opts["states"])
    elif opts["beta"] == 0 and {"energy", "normalized_energy"} & set(opts["observables"]):
        raise ParameterError("observables", "the energy E_beta needs beta > 0")
    elif opts["beta"] > ENERGY_MAX_BETA and "energy" in opts["observables"]:
        raise ParameterError("observables", f"the energy E_beta overflows float64 for beta > {ENERGY_MAX_BETA:.4g}; "
                             "use normalized_energy")  # fmt: skip
    sde = bool(getattr(model, "is_sde", False))
    _warn_unstable_step(args.model, opts)
    edges = np.linspace(-1.0, 1.0, HIST_BINS + 1)
    batch, n = x0.shape[0], x0.shape[1]
    describe = f"{model.name} n={n} d={d} batch={batch} beta={opts['beta']:g}"
    if opts["kappa"] is not None:
        describe += f" kappa={opts['kappa']:g}"
    return run_and_store(
        model,
        x0,
        opts,
        default_method="stratonovich-heun" if sde else "rk4",
        noise_seed=noise_seed(opts["seed"]) if sde else None,
        obs_dims={"pair_histogram": ("batch", "bin")},
        coords={"bin": 0.5 * (edges[1:] + edges[:-1])},
        attrs={"init": init_desc, "n": n, "d": d, "batch": batch, "normalized_input": opts["normalize"]},
        describe=describe,
    )
