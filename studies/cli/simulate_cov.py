"""``attnflow simulate shaped-block|shaped-attention|...``: covariance SDEs of shaped networks.

Models (MODELS.md section 2; t = layer / n):

* ``shaped-block``        dV = gamma^2 (b_SA + b_ReLU) dt + [gamma^2 (4 - gamma^2) Sigma_lin + gamma^4/H Sigma_SA]^{1/2} dB
* ``shaped-attention``    dV = gamma^2 b_SA dt + [gamma^2 (2 - gamma^2) Sigma_lin + gamma^4/H Sigma_SA]^{1/2} dB
* ``shaped-mlp``          LNR: dV = b_ReLU dt + Sigma_lin^{1/2} dB
* ``shaped-mlp-residual`` dV = gamma^2 b_ReLU dt + (2 gamma^2 Sigma_lin)^{1/2} dB
* ``residual-linear``     dV = (gamma^2 (2 - gamma^2) Sigma_lin)^{1/2} dB
* ``shaped-correlation``  m = 2: x = artanh(rho), dx = [a nu(rho)/(1 - rho^2) + k rho/2] dt + sqrt(k) dW
                          (LNR: a = k = 1; with --gamma the residual MLP: a = gamma^2, k = 2 gamma^2)
* ``finite-network``      the finite network itself (plain torch weights or the exact chain), V per layer

The state V (time, batch, m, m) is stored as dataset ``V`` with dimensions (batch, m, m2).
V0 = (1 - rho0) I + rho0 1 1^T by default (``--v0 FILE.npy`` for any PSD matrix). Paths that
blow up (the attention drift is cubic) *exit* once an entry passes ``--exit-threshold``
(default :data:`EXIT_THRESHOLD`) or becomes non-finite: the file's ``exited`` and ``exit_time``
datasets say which and when, their states are stored as NaN from then on, and the summary
line, the attribute ``n_exited`` and ``attnflow info`` count them and average over the others.

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759; Li, Nica, Roy, "The neural
covariance SDE", arXiv:2206.02768.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from integrators.validation import ParameterError

from studies.cli.simulate import OUTPUT_OPTIONS, RUN_OPTIONS, run_and_store, with_observables
from studies.cli.options import Option, add_options, choice, integer, load_npy, real, resolve_options, text, with_help

__all__ = [
    "COV_OPTIONS", "EXIT_THRESHOLD", "MODELS", "USES", "build_model", "initial_covariance", "register_models"]

MODELS = {
    "shaped-block": "shaped transformer block covariance SDE (NOCI)",
    "shaped-attention": "residual shaped attention covariance SDE (NOCI)",
    "shaped-mlp": "shaped ReLU MLP covariance SDE, no residual (LNR)",
    "shaped-mlp-residual": "residual shaped ReLU MLP covariance SDE",
    "residual-linear": "residual linear layer covariance SDE (Wishart-type)",
    "shaped-correlation": "m = 2 correlation SDE of the shaped MLP in artanh coordinates (LNR)",
}
#: default --exit-threshold: far above any covariance these models reach before they blow up
#: (entries O(1)-O(10)), far below the 1e100-1e300 a runaway path reaches before it overflows
EXIT_THRESHOLD = 1e6
#: --method help of the covariance SDEs: Ito equations, so no Stratonovich stepper
METHOD_HELP = ("stepper: euler-maruyama (the default) or psd-euler-maruyama (projects V back onto the PSD cone "
               "after each step). These are Ito SDEs: stratonovich-heun is refused")
CORRELATION_METHOD_HELP = ("stepper: euler-maruyama (the only one: an Ito SDE for x = artanh(rho), so "
                           "stratonovich-heun is refused, and psd-euler-maruyama is for matrices)")
ARCHITECTURES = ("shaped-block", "shaped-attention", "shaped-mlp-residual", "residual-linear", "shaped-mlp",
                 "standard", "standard-preln")  # fmt: skip

COV_OPTIONS: tuple[Option, ...] = (
    Option("m", integer(2), 8, "number of tokens"),
    Option("rho0", real(-1.0, 1.0), 0.2, "initial correlation: V0 = (1 - rho0) I + rho0 11^T"),
    Option("v0", text, None, "initial covariance from a .npy file, (m, m) or (batch, m, m)", path=True, metavar="FILE"),
    Option("gamma", real(0.0, 1.0, strict=True), 1 / math.sqrt(8), "residual branch weight, lambda^2 + gamma^2 = 1"),
    Option("tau0", real(0.0, strict=True), 1.0, "attention temperature constant, tau = tau0 sqrt(n n_k)"),
    Option("c-plus", real(), 0.0, "shaped ReLU: s_+ = 1 + c_+/sqrt(n)"),
    Option("c-minus", real(), -1.0, "shaped ReLU: s_- = 1 + c_-/sqrt(n)"),
    Option("heads", integer(1), 1, "attention heads (Sigma_SA is divided by it)"),
)  # fmt: skip

NETWORK_OPTIONS: tuple[Option, ...] = (
    Option("architecture", choice(ARCHITECTURES), "shaped-block", "network: " + ", ".join(ARCHITECTURES)),
    Option("n", integer(2), 200, "width"),
    Option("n-k", integer(1), None, "key width per head (default n)"),
    Option("depth", integer(1), 150, "number of blocks (SDE time T = depth / n)"),
    Option("simulator", choice(("chain", "plain")), "chain", "exact finite-width chain or plain torch weights"),
    Option("record-every", integer(1), 1, "record V every k blocks"),
    Option("device", text, "cpu", "torch device"),
    Option("dtype", choice(("float64", "float32")), "float64", "float64 or float32"),
    Option("seed", integer(0), 0, "seed of the weights"),
    Option("batch", integer(1), 64, "independent networks"),
    *OUTPUT_OPTIONS,
)  # fmt: skip


def _observable_names(name: str) -> list[str]:
    from particles.covariance.observables import CORRELATION_OBSERVABLES, COVARIANCE_OBSERVABLES

    return list(CORRELATION_OBSERVABLES if name == "shaped-correlation" else COVARIANCE_OBSERVABLES)


def register_models(subparsers) -> None:
    for name, help_ in MODELS.items():
        p = subparsers.add_parser(name, help=help_, description=f"Simulate the {help_}; write an HDF5 run.")
        method_help = CORRELATION_METHOD_HELP if name == "shaped-correlation" else METHOD_HELP
        options = with_observables(RUN_OPTIONS, _observable_names(name), "none; V is stored")
        add_options(p, COV_OPTIONS + with_help(options, "method", method_help))
        p.set_defaults(func=run)
    p = subparsers.add_parser("finite-network", help="finite shaped/standard network at initialisation: V per layer",
                              description="Run a finite network (exact chain or plain torch weights); write V per layer.")  # fmt: skip
    add_options(p, COV_OPTIONS + NETWORK_OPTIONS + (RUN_OPTIONS[0],))
    p.set_defaults(func=run_network)


#: the parameter options each model reads (giving another one is an error, not silently ignored)
USES = {
    "shaped-block": {"gamma", "tau0", "c_plus", "c_minus", "heads"},
    "shaped-attention": {"gamma", "tau0", "heads"},
    "shaped-mlp": {"c_plus", "c_minus"},
    "shaped-mlp-residual": {"gamma", "c_plus", "c_minus"},
    "residual-linear": {"gamma"},
    "shaped-correlation": {"gamma", "c_plus", "c_minus"},
}


def _check_unused(name: str, given: frozenset[str]) -> None:
    for key in ("gamma", "tau0", "c_plus", "c_minus", "heads"):
        if key in given and key not in USES[name]:
            raise ParameterError(key.replace("_", "-"), f"{name} has no parameter {key.replace('_', '-')}")


def build_model(name: str, opts: dict[str, Any], given: frozenset[str] = frozenset()):
    """The covariance SDE model named ``name`` from resolved options.

    ``shaped-correlation`` is LNR's (no residual) unless gamma is given, then the
    residual MLP's (drift gamma^2 nu, diffusion 2 gamma^2).
    """
    from particles.covariance import correlation_sde
    from particles.covariance import models as cm
    from particles.covariance.correlation import CorrelationSDE

    g, cp, cm_ = opts["gamma"], opts["c_plus"], opts["c_minus"]
    if name == "shaped-block":
        return cm.ShapedBlockSDE(g, opts["tau0"], cp, cm_, opts["heads"])
    if name == "shaped-attention":
        return cm.ShapedAttentionSDE(g, opts["tau0"], opts["heads"])
    if name == "shaped-mlp":
        return cm.ShapedMLPSDE(cp, cm_)
    if name == "shaped-mlp-residual":
        return cm.ResidualShapedMLPSDE(g, cp, cm_)
    if name == "residual-linear":
        return cm.ResidualLinearSDE(g)
    if name == "shaped-correlation":
        if "gamma" in given:
            return correlation_sde(cm.ResidualShapedMLPSDE(g, cp, cm_))
        return CorrelationSDE(cp, cm_, 1.0, 1.0)
    raise ParameterError("model", f"unknown covariance model {name!r}")


def initial_covariance(opts: dict[str, Any], given: frozenset[str]) -> np.ndarray:
    """V0 (batch, m, m): from --v0, else (1 - rho0) I + rho0 11^T, validated (symmetric PSD, m >= 2)."""
    from particles.covariance import check_covariance

    if opts["v0"] is not None:
        for key in ("rho0", "m"):
            if key in given:
                raise ParameterError(key, f"give either --{key} or --v0, not both")
        V = check_covariance(load_npy("v0", opts["v0"]), name="v0")
    else:
        m, r = opts["m"], opts["rho0"]
        if r < -1.0 / (m - 1):
            raise ParameterError("rho0", f"(1 - rho0) I + rho0 11^T is PSD only for rho0 >= -1/(m-1) = {-1 / (m - 1):.4g}")
        V = check_covariance((1.0 - r) * np.eye(m) + r * np.ones((m, m)), name="rho0")
    if V.shape[0] == 1 and opts["batch"] > 1:
        V = np.repeat(V, opts["batch"], axis=0)
    elif V.shape[0] != opts["batch"] and "batch" in given:
        raise ParameterError("batch", f"--batch {opts['batch']} but --v0 holds {V.shape[0]} matrices")
    return V


def _noise_seed(seed: int) -> int:
    from studies.cli.simulate_flow import noise_seed

    return noise_seed(seed)


def run(args) -> int:
    from particles.covariance.observables import COVARIANCE_OBSERVABLE_DIMS

    opts, given = resolve_options(COV_OPTIONS + RUN_OPTIONS, args, fixed={"model": args.model})
    _check_unused(args.model, given)
    model = build_model(args.model, opts, given)
    if args.model == "shaped-correlation":
        if "m" in given and opts["m"] != 2 or opts["v0"] is not None:
            raise ParameterError("m", "the correlation SDE is for m = 2 tokens; give --rho0")
        if not -1.0 < opts["rho0"] < 1.0:
            raise ParameterError("rho0", f"need |rho0| < 1, got {opts['rho0']}")
        x0 = np.full((opts["batch"], 1), math.atanh(opts["rho0"]))
        state_name, dims, describe = "x", ("batch", "one"), f"{model.name} rho0={opts['rho0']:g}"
    else:
        if opts["v0"] is None:  # before building it: a one-line error, not an allocation traceback
            from integrators.memory import check_state_size

            check_state_size("m", (opts["batch"], opts["m"], opts["m"]))
        x0 = initial_covariance(opts, given)
        state_name, dims = "V", ("batch", "m", "m2")
        describe = f"{model.name} m={x0.shape[-1]} batch={x0.shape[0]}"
        for key in ("gamma", "tau0", "heads"):
            if key in opts and key in model.params():
                describe += f" {key}={opts[key]:g}"
    return run_and_store(
        model,
        x0,
        opts,
        default_method="euler-maruyama",
        noise_seed=_noise_seed(opts["seed"]),
        state_name=state_name,
        state_dims=dims,
        obs_dims=COVARIANCE_OBSERVABLE_DIMS,
        attrs={"state_meaning": "artanh(rho)" if state_name == "x" else "covariance V"},
        describe=describe,
        default_exit_threshold=EXIT_THRESHOLD,
    )


def build_network(opts: dict[str, Any]):
    from particles.networks import ShapedMLP, ShapedTransformer, StandardTransformer

    a, n = opts["architecture"], opts["n"]
    common = dict(n=n, gamma=opts["gamma"], n_k=opts["n_k"], heads=opts["heads"])
    if a.startswith("standard"):
        return StandardTransformer(**common, pre_ln=a == "standard-preln")
    if a == "shaped-mlp":
        return ShapedMLP(n, opts["c_plus"], opts["c_minus"])
    layers = {"shaped-block": "block", "shaped-attention": "attention", "shaped-mlp-residual": "mlp",
              "residual-linear": "linear"}[a]  # fmt: skip
    return ShapedTransformer(**common, tau0=opts["tau0"], c_plus=opts["c_plus"], c_minus=opts["c_minus"], layers=layers)


def run_network(args) -> int:
    from particles.covariance import FiniteWidthChain

    from studies.cli.simulate import _check_out
    from studies.store import RunWriter

    opts, given = resolve_options(COV_OPTIONS + NETWORK_OPTIONS + (RUN_OPTIONS[0],), args)
    net = build_network(opts)
    V0 = initial_covariance(opts, given)
    sim = FiniteWidthChain(net) if opts["simulator"] == "chain" else net
    out = Path(opts["out"])
    _check_out(out, opts["group"], opts["overwrite"])
    res = sim.run(V0, opts["depth"], seed=opts["seed"], device=opts["device"], dtype=opts["dtype"],
                  record_every=opts["record_every"])  # fmt: skip
    with RunWriter(out, model=net.name, params=net.params(), method=f"finite-{opts['simulator']}", dt=1.0 / net.n,
                   backend="torch", dtype=opts["dtype"], device=opts["device"], seed=opts["seed"],
                   group=opts["group"], state_name="V", state_dims=("batch", "m", "m2"),
                   obs_dims={"layer": ("one",)}, compression=opts["compression"],
                   attrs={"depth": opts["depth"], "simulator": opts["simulator"]},
                   overwrite=opts["overwrite"]) as w:  # fmt: skip
        for layer, V in zip(res.layers, res.V):
            w.append(layer / net.n, V, {"layer": np.array([layer])})
    rho = res.rho()[-1]
    print(f"wrote {out}")
    print(f"{net.name} n={net.n} depth={opts['depth']} batch={V0.shape[0]} {opts['simulator']} | "
          f"{res.meta['wall_time_s']:.3g} s | final mean rho12={np.nanmean(rho):.4g}")  # fmt: skip
    return 0
