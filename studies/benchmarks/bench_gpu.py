"""GPU performance against the peers on the same GPU, every ratio from one run.

    python -m studies.benchmarks.bench_gpu [--quick] [--out FILE]

1. Ensemble 2048 systems x n = 32 x d = 128, 300 Euler steps of the SA flow (beta = 1,
   dt = 0.01): ``solve(..., backend="torch", device="cuda")`` from a state already on the
   GPU with the saves kept there (``save_states="device"``), and with host copies of the
   saves (``save_states=True``), float32 and float64, against the authors' batched step
   (:class:`studies.benchmarks.flow_baselines.AuthorsEuler`). Target >= 5x.
2. One SA drift, d = 64: n = 65536 in float32 (target within 1.1x of SDPA), n = 4096 and
   65536 in float64 (target >= 2x faster than SDPA, which has no fused float64 kernel).
   Ours is the torch backend's CUDA field (``backend.drift(model)``); SDPA is one call of
   ``scaled_dot_product_attention`` on (1, 1, n, d) with scale beta.
3. Shaped block SDE, m = 8, 10^5 paths, 1000 Euler-Maruyama steps (dt = 1e-3) on CUDA:
   ``solve`` against ``torchsde.sdeint`` (its own BrownianInterval) through the adapter.
   Target >= 10x.
4. Exact finite-width chain vs the plain finite network (n = 512, m = 8, d = 512 blocks,
   batch 64) on CUDA; the plain network timed over a few blocks and extrapolated, as in
   ``bench_cov``. Target >= 20x.

Exits 0 with a message when CUDA is absent. Writes JSON (with a readable ``table``) to
``--out`` and prints the table. Timings are single runs after a warm-up, synchronised.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

__all__ = ["NO_CUDA", "SIZES", "main", "run"]

NO_CUDA = "bench_gpu: no CUDA device (torch.cuda.is_available() is False); nothing measured"

SIZES = {
    "full": {"ens": (2048, 32, 128), "ens_steps": 300, "drift_f32": [65536], "drift_f64": [4096, 65536],
             "sde_paths": 100_000, "sde_steps": 1000, "n": 512, "depth": 512, "net_batch": 64, "plain_blocks": 8},
    "quick": {"ens": (256, 32, 64), "ens_steps": 20, "drift_f32": [4096], "drift_f64": [1024],
              "sde_paths": 2000, "sde_steps": 20, "n": 64, "depth": 16, "net_batch": 8, "plain_blocks": 4},
}  # fmt: skip


def _timed(fn):
    import torch

    fn()  # warm-up: compilation, allocation
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def _ensemble(size: dict) -> dict:
    import torch

    from integrators import solve
    from particles import SelfAttention, uniform_sphere

    from .flow_baselines import AuthorsEuler

    B, n, d = size["ens"]
    steps, dt, beta = size["ens_steps"], 0.01, 1.0
    model = SelfAttention(beta=beta)
    x_host = uniform_sphere(batch=B, n=n, d=d, seed=0)
    out = {}
    for dtype in ("float32", "float64"):
        x0 = torch.as_tensor(x_host, device="cuda", dtype=getattr(torch, dtype))
        kw = dict(dt=dt, method="euler", backend="torch", device="cuda", dtype=dtype, save_at=2)
        t_dev, _ = _timed(lambda: solve(model, x0, steps * dt, save_states="device", **kw))
        t_host, _ = _timed(lambda: solve(model, x0, steps * dt, save_states=True, **kw))
        base = AuthorsEuler(x0, beta, dt)
        t_auth, _ = _timed(lambda: base.run(steps))
        out[dtype] = {"ours_device_saves_s": t_dev, "ours_host_saves_s": t_host, "authors_s": t_auth,
                      "ratio": t_auth / t_dev, "ratio_with_host_copies": t_auth / t_host}  # fmt: skip
    return {"batch": B, "n": n, "d": d, "steps": steps, "target": ">= 5x", **out}


def _drift(size: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from integrators.backends import TorchBackend
    from particles import SelfAttention

    model = SelfAttention(beta=1.0)
    res = []
    for dtype, ns in (("float32", size["drift_f32"]), ("float64", size["drift_f64"])):
        be = TorchBackend(dtype, "cuda")
        f = be.drift(model)
        for n in ns:
            g = torch.Generator(device="cuda").manual_seed(n)
            x = torch.nn.functional.normalize(torch.randn(1, n, 64, device="cuda", generator=g, dtype=be._torch_dtype), dim=-1)
            t_ours, _ = _timed(lambda: f(0.0, x))
            q = x.unsqueeze(1)
            t_sdpa, _ = _timed(lambda: F.scaled_dot_product_attention(q, q, q, scale=1.0))
            target = "within 1.1x of SDPA (ratio >= 0.91)" if dtype == "float32" else ">= 2x"
            res.append({"dtype": dtype, "n": n, "d": 64, "ours_s": t_ours, "sdpa_s": t_sdpa,
                        "ratio": t_sdpa / t_ours, "tflops": 4 * n * n * 64 / t_ours / 1e12, "target": target})  # fmt: skip
    return {"cases": res}


def _sde(size: dict) -> dict:
    import numpy as np

    from integrators import solve
    from integrators.torchsde_adapter import sdeint_model
    from particles.covariance import ShapedBlockSDE

    M, DT = 8, 1e-3
    model = ShapedBlockSDE(1 / math.sqrt(8), 1.0)
    V0 = np.repeat((0.8 * np.eye(M) + 0.2)[None], size["sde_paths"], axis=0)
    T = size["sde_steps"] * DT
    kw = dict(dt=DT, method="euler-maruyama", backend="torch", device="cuda", seed=1, exit_threshold=1e6)
    solve(model, V0[:64], 2 * DT, **{**kw, "seed": 0})
    t_ours, sol = _timed(lambda: solve(model, V0, T, **kw))
    t_sde, _ = _timed(lambda: sdeint_model(model, V0, [0.0, T], dt=DT, method="euler", seed=3, device="cuda"))
    return {"m": M, "paths": size["sde_paths"], "steps": size["sde_steps"], "ours_s": t_ours, "torchsde_s": t_sde,
            "ratio": t_sde / t_ours, "exit_fraction": sol.exit_fraction, "target": ">= 10x"}  # fmt: skip


def _networks(size: dict) -> dict:
    import numpy as np

    from particles.covariance import FiniteWidthChain
    from particles.networks import ShapedTransformer

    n, d, b, k = size["n"], size["depth"], size["net_batch"], size["plain_blocks"]
    net = ShapedTransformer(n, 1 / math.sqrt(8), 1.0)
    V0 = 0.8 * np.eye(8) + 0.2
    chain = FiniteWidthChain(net)
    t_chain, run_c = _timed(lambda: chain.run(V0, d, seed=1, batch=b, record_every=k, device="cuda"))
    t_plain, run_p = _timed(lambda: net.run(V0, k, seed=2, batch=b, record_every=k, device="cuda"))
    per_block = t_plain / k
    return {"n": n, "m": 8, "depth": d, "batch": b, "chain_s": t_chain, "plain_s_per_block": per_block,
            "plain_s_extrapolated": per_block * d, "ratio": per_block * d / t_chain, "target": ">= 20x",
            "chain_cuda_graph": run_c.meta["cuda_graph"], "plain_cuda_graph": run_p.meta["cuda_graph"]}  # fmt: skip


def _table(r: dict) -> str:
    e = r["ensemble"]
    lines = [f"GPU benchmark ({r['device']}), size {r['size']}; ratio = peer time / ours", ""]
    lines.append(f"ensemble {e['batch']} x {e['n']} x {e['d']}, {e['steps']} Euler steps (target {e['target']})")
    for dt in ("float32", "float64"):
        v = e[dt]
        lines.append(f"  {dt}: ours {v['ours_device_saves_s']:.4f} s (saves on device), {v['ours_host_saves_s']:.4f} s "
                     f"(host copies); authors {v['authors_s']:.4f} s -> {v['ratio']:.2f}x ({v['ratio_with_host_copies']:.2f}x)")  # fmt: skip
    lines.append("SA drift, d = 64, vs scaled_dot_product_attention")
    for c in r["drift"]["cases"]:
        lines.append(f"  {c['dtype']} n={c['n']}: ours {c['ours_s'] * 1e3:.3f} ms ({c['tflops']:.1f} TFLOP/s), "
                     f"SDPA {c['sdpa_s'] * 1e3:.3f} ms -> {c['ratio']:.2f}x (target {c['target']})")  # fmt: skip
    s = r["sde"]
    lines.append(f"block SDE m=8, {s['paths']} paths, {s['steps']} steps: ours {s['ours_s']:.3f} s, torchsde "
                 f"{s['torchsde_s']:.3f} s -> {s['ratio']:.2f}x (target {s['target']})")  # fmt: skip
    w = r["networks"]
    lines.append(f"exact chain n={w['n']} d={w['depth']} batch {w['batch']}: chain {w['chain_s']:.3f} s, plain "
                 f"{w['plain_s_extrapolated']:.3f} s (extrapolated) -> {w['ratio']:.2f}x (target {w['target']}); "
                 f"CUDA graph: chain {w['chain_cuda_graph']}, plain {w['plain_cuda_graph']}")  # fmt: skip
    return "\n".join(lines)


def run(size: str = "full") -> dict:
    """Every workload of the table, in this process; returns the results with a readable ``table``."""
    import torch

    s = SIZES[size]
    res = {"size": size, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "python": platform.python_version()}  # fmt: skip
    try:
        import triton

        res["triton"] = triton.__version__
    except ImportError:
        res["triton"] = None
    for name, fn in (("ensemble", _ensemble), ("drift", _drift), ("sde", _sde), ("networks", _networks)):
        res[name] = fn(s)
    res["table"] = _table(res)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.benchmarks.bench_gpu", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--out", default="benchmark_results/bench_gpu.json")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    res = run("quick" if a.quick else "full")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(res["table"])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
