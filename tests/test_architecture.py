"""The house rules, checked on the source: one direction of imports, no module cycles,
and every public name of the packages still importable.

Imports are read with :mod:`ast` from every module of the four packages, including
imports inside functions (a lazy import is still a dependency); imports under
``if TYPE_CHECKING:`` are annotations only and are skipped.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: studies -> particles -> integrators; attnflow (the facade) may import all three.
LAYERS = {"integrators": 0, "particles": 1, "studies": 2, "attnflow": 3}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else ():
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def _edges(mods) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from P import M`` with M a module counts as P.M)."""

    def known(name: str) -> str | None:
        while name and name not in mods:
            if "." not in name:
                return None
            name = name.rsplit(".", 1)[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_lines(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                subs = [f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else subs + [src]
            else:
                continue
            for t in targets:
                k = known(t)
                if k is not None and k != mod:
                    deps.add(k)
        edges[mod] = deps
    return edges


MODULES = _modules()
EDGES = _edges(MODULES)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_the_walk_sees_the_packages():
    # Guards the two tests below against passing on an empty or unparsed tree.
    assert {"integrators.solve", "particles.sphere.attention", "studies.cli.main"} <= set(MODULES)
    assert "integrators.registry" in EDGES["integrators.solve"]
    assert "particles.sphere.geometry" in EDGES["particles.sphere.attention"]


def test_imports_run_one_way():
    upward = sorted(
        f"{m} -> {d}"
        for m, deps in EDGES.items()
        for d in deps
        if LAYERS[d.split(".")[0]] > LAYERS[m.split(".")[0]]
    )
    assert not upward, "imports against studies -> particles -> integrators:\n" + "\n".join(upward)


def test_no_module_cycles():
    cycles = _cycles(EDGES)
    assert not cycles, "module cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: Every public name importable before the reorganisation (issue 9), by where it was imported from.
PUBLIC = {
    "integrators": [
        "solve", "Solution", "STEPPERS", "Stepper", "get_stepper", "register", "BrownianIncrements",
        "PIController", "BACKENDS", "get_backend", "NumpyBackend", "NumbaBackend", "TorchBackend",
    ],
    "particles": [
        "theory", "flow_theory", "SelfAttention", "FeedForward", "NoisyAttention", "NORMALIZATIONS",
        "ACTIVATIONS", "PiecewiseConstant", "ParameterError", "Sphere", "Euclidean", "SymmetricMatrices",
        "sphere_tangent", "sphere_retract", "sphere_expmap", "uniform_sphere", "orthogonal", "equiangular",
        "hemisphere", "from_file", "check_unit", "random_rotation", "OBSERVABLES", "gram",
        "pair_inner_products", "pair_histogram", "fraction_close_pairs", "cluster_count",
        "cluster_count_rank", "energy", "normalized_energy", "min_inner_product", "consensus_gap",
        "collapse_time", "DiscreteTransformer", "PreLNFlow", "DirectionRadius", "signalprop",
        "SignalPropParams", "covariance", "networks", "ShapedBlockSDE", "ShapedAttentionSDE",
        "ShapedMLPSDE", "ResidualShapedMLPSDE", "ResidualLinearSDE", "CorrelationSDE", "FiniteWidthChain",
        "ShapedTransformer", "StandardTransformer", "ShapedMLP",
    ],
    "particles.covariance": [
        "COVARIANCE_MODELS", "Coefficients", "ConvergenceProblem", "CorrelationSDE", "FiniteWidthChain",
        "OneStepMoments", "ResidualLinearSDE", "ResidualShapedMLPSDE", "ShapedAttentionSDE", "ShapedBlockSDE",
        "ShapedMLPSDE", "check_covariance", "convergence_problem", "correlation_sde", "one_step_moments",
        "wishart_factor",
    ],
    "particles.networks": ["SHAPED_LAYERS", "NetworkRun", "ShapedMLP", "ShapedTransformer", "StandardTransformer", "layer_norm"],
    "particles.signalprop": [
        "PHIS", "RESIDUALS", "AttentionMoments", "Exponents", "MapCoefficients", "MapTrajectory", "OverlapTable",
        "SignalPropParams", "SimplexFixedPoint", "angle_exponent", "attention_map", "attention_moments",
        "block_map", "coefficients", "collapse_fixed_point", "dkernel", "exponents", "gradient_step",
        "gradient_transfer", "gram_jacobian_eigenvalues", "gram_map", "hutchinson_slope", "iterate_gram",
        "iterate_map", "kernel", "mean_mode_exponent", "mlp_map", "overlap_table", "second_moment",
        "simplex_fixed_point", "slope_moment",
    ],
    "particles.theory": ["mode_growth_rate", "bessel_cluster_count"],
    "studies.cli": ["main", "build_parser", "UserError"],
    "studies.store": ["RunWriter", "Run", "read_run", "list_runs", "open_xarray", "summarize", "repair", "FORMAT_VERSION"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_still_importable(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost: {missing}"
