"""Performance of the covariance SDEs and finite networks, every ratio from one run.

    python -m studies.benchmarks.bench_cov [--quick] [--out FILE]

1. Euler-Maruyama for the shaped transformer block SDE (gamma = 1/sqrt(8), tau0 = 1),
   m = 8, batch 10^4 paths, 1000 steps of dt = 1e-3 from V0 = 0.8 I + 0.2 11^T:
   ``integrators.solve`` on the numba and torch backends against ``torchsde.sdeint``
   (method "euler", its own BrownianInterval) on the same model through
   :class:`integrators.torchsde_adapter.TorchsdeAdapter` (general noise, ``g_prod``:
   the 64 x 128 diffusion matrix per path is never built). Reported: seconds, seconds per
   step, ratios torchsde / ours, and the two-sample KS p-values of rho^{12}_T between the
   three (they must agree in law), over the paths every solver keeps by one rule
   (``_kept``). Target: >= 10x. For transparency also torchsde fed our
   increments (``brownian=``): that ratio is the solver overhead alone, without the cost
   of torchsde's Brownian interval tree, which grows with the number of steps.
2. The finite shaped transformer, n = 512, m = 8, d = 512 blocks, batch 64: the exact
   finite-width chain over all 512 blocks against the plain torch network with real
   weight matrices. The plain network's cost per block is constant (3 fresh (n x n) value
   / MLP matrices and 2 (n x n_k) key matrices per network per block), so it is timed over
   ``plain_blocks`` blocks and extrapolated to d; the ratio uses the extrapolation (stated
   in the output). Target: >= 20x.

Everything runs in this process, with the thread counts printed in the output. The
CPU may be shared: timings are single runs in ``full`` size (best of 3 in ``quick``).
Writes JSON (with a readable ``table``) to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

__all__ = ["SIZES", "main", "run"]

SIZES = {
    "full": {"batch": 10_000, "steps": 1000, "n": 512, "depth": 512, "net_batch": 64, "plain_blocks": 8, "repeat": 1},
    "quick": {"batch": 512, "steps": 20, "n": 64, "depth": 32, "net_batch": 16, "plain_blocks": 8, "repeat": 3},
}
M, DT, GAMMA, TAU0 = 8, 1e-3, 1 / math.sqrt(8), 1.0
EXIT = 1e6  # exit threshold on max |V^{ab}|


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _rho(V):
    """rho^{12} of the given states (the caller passes the kept paths only, see ``_kept``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = V[..., 0, 1] / np.sqrt(V[..., 0, 0] * V[..., 1, 1])
    return r[np.isfinite(r)]


def _kept(V, exited=None):
    """One rule for every solver: a path counts if it never exited (our exit handling), ends
    finite and below EXIT, and ends with positive variances. Plain Euler-Maruyama (ours and
    torchsde's) can leave the PSD cone; torchsde has no exit handling, so for it the rule is
    applied to the final state only."""
    with np.errstate(invalid="ignore"):
        ok = np.max(np.abs(V), axis=(-1, -2)) <= EXIT  # NaN compares False
        ok &= (V[..., 0, 0] > 0) & (V[..., 1, 1] > 0)
    if exited is not None:
        ok &= ~exited
    return ok


def _sde(size: dict) -> dict:
    from scipy import stats

    from integrators import BrownianIncrements, solve
    from integrators.torchsde_adapter import sdeint_model
    from particles.covariance import ShapedBlockSDE

    model = ShapedBlockSDE(GAMMA, TAU0)
    V0 = np.repeat((0.8 * np.eye(M) + 0.2)[None], size["batch"], axis=0)
    T = size["steps"] * DT
    for be in ("numba", "torch"):  # compile / warm up
        solve(model, V0[:64], 2 * DT, dt=DT, method="euler-maruyama", backend=be, seed=0)
    ours = BrownianIncrements(tuple(model.noise_shape(V0.shape)), DT, 4)
    res, finals = {}, {}
    for name, fn in {
        "numba": lambda: solve(model, V0, T, dt=DT, method="euler-maruyama", backend="numba", seed=1, exit_threshold=EXIT),
        "torch": lambda: solve(model, V0, T, dt=DT, method="euler-maruyama", backend="torch", seed=2, exit_threshold=EXIT),
        "torchsde": lambda: sdeint_model(model, V0, [0.0, T], dt=DT, method="euler", seed=3),
        "torchsde_our_noise": lambda: sdeint_model(model, V0, [0.0, T], dt=DT, method="euler", brownian=ours),
    }.items():
        sec, out = _best(fn, size["repeat"])
        V, exited = (out[-1], None) if name.startswith("torchsde") else (out.final, out.exited)
        keep = _kept(V, exited)
        finals[name] = V[keep]
        res[name] = {"seconds": sec, "seconds_per_step": sec / size["steps"], "left_out_fraction": float(1 - keep.mean())}
        if exited is not None:
            res[name]["exit_fraction"] = out.exit_fraction
    ks = {f"{a}_vs_{b}": float(stats.ks_2samp(_rho(finals[a]), _rho(finals[b])).pvalue)
          for a, b in (("numba", "torch"), ("numba", "torchsde"), ("torch", "torchsde"))}  # fmt: skip
    return {
        "model": model.params(), "m": M, "batch": size["batch"], "steps": size["steps"], "dt": DT,
        "times": res, "ks_pvalue_rho12": ks,
        "ratio_torchsde_over_numba": res["torchsde"]["seconds"] / res["numba"]["seconds"],
        "ratio_torchsde_over_torch": res["torchsde"]["seconds"] / res["torch"]["seconds"],
        "ratio_torchsde_our_noise_over_numba": res["torchsde_our_noise"]["seconds"] / res["numba"]["seconds"],
        "ratio_torchsde_our_noise_over_torch": res["torchsde_our_noise"]["seconds"] / res["torch"]["seconds"],
    }  # fmt: skip


def _networks(size: dict) -> dict:
    from scipy import stats

    from particles.covariance import FiniteWidthChain
    from particles.networks import ShapedTransformer

    n, d, b, k = size["n"], size["depth"], size["net_batch"], size["plain_blocks"]
    net = ShapedTransformer(n, GAMMA, TAU0)
    V0 = 0.8 * np.eye(M) + 0.2
    chain = FiniteWidthChain(net)
    chain.run(V0, 2, seed=0, batch=2)  # warm-up
    t_chain, rc = _best(lambda: chain.run(V0, d, seed=1, batch=b, record_every=k), size["repeat"])
    t_plain, rp = _best(lambda: net.run(V0, k, seed=2, batch=b, record_every=k), size["repeat"])
    per_block = t_plain / k
    return {
        "n": n, "m": M, "depth": d, "batch": b,
        "chain_seconds": t_chain, "plain_seconds_for_blocks": t_plain, "plain_blocks_timed": k,
        "plain_seconds_per_block": per_block, "plain_seconds_extrapolated": per_block * d,
        "ratio_plain_over_chain": per_block * d / t_chain,
        "ks_pvalue_rho12_at_plain_blocks": float(stats.ks_2samp(_rho(rp.final), _rho(rc.V[1])).pvalue),
    }  # fmt: skip


def run(size: str = "full") -> dict:
    import numba
    import torch

    s = SIZES[size]
    out = {
        "size": size,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "numba_threads": numba.get_num_threads(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
    }  # fmt: skip
    out["sde"] = _sde(s)
    out["networks"] = _networks(s)
    sde, net = out["sde"], out["networks"]
    t = sde["times"]
    out["table"] = [
        f"block SDE, m={M}, batch={sde['batch']}, {sde['steps']} EM steps (dt={DT}):",
        f"  numba    {t['numba']['seconds']:9.2f} s   torchsde/numba = {sde['ratio_torchsde_over_numba']:.2f}x",
        f"  torch    {t['torch']['seconds']:9.2f} s   torchsde/torch = {sde['ratio_torchsde_over_torch']:.2f}x",
        f"  torchsde {t['torchsde']['seconds']:9.2f} s   (target >= 10x; its own BrownianInterval, as sdeint defaults)",
        (f"  torchsde on our increments {t['torchsde_our_noise']['seconds']:6.2f} s   (solver overhead only: "
         f"/numba = {sde['ratio_torchsde_our_noise_over_numba']:.2f}x, /torch = {sde['ratio_torchsde_our_noise_over_torch']:.2f}x)"),
        f"  same law (KS p, rho12): {', '.join(f'{k} {v:.3f}' for k, v in sde['ks_pvalue_rho12'].items())}",
        "  left out (exited / non-finite / non-PSD diagonal): "
        + ", ".join(f"{k} {v['left_out_fraction']:.4f}" for k, v in t.items()),
        f"finite shaped transformer, n={net['n']}, m={M}, d={net['depth']}, batch={net['batch']}:",
        f"  chain    {net['chain_seconds']:9.2f} s",
        (f"  plain    {net['plain_seconds_extrapolated']:9.2f} s  (= {net['plain_seconds_per_block']:.3f} s/block x "
         f"{net['depth']}, timed over {net['plain_blocks_timed']} blocks)"),
        (f"  plain/chain = {net['ratio_plain_over_chain']:.1f}x (target >= 20x); KS p after "
         f"{net['plain_blocks_timed']} blocks {net['ks_pvalue_rho12_at_plain_blocks']:.3f}"),
    ]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.benchmarks.bench_cov", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--out", type=Path, default=Path("benchmark_results/cov.json"), help="JSON output file")
    a = p.parse_args(argv)
    result = run("quick" if a.quick else "full")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(result["table"]))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
