"""Benchmark of the sweep machinery on the local executor.

Measures, in one run, and writes to ``benchmark_results/sweep.json``:

* overhead per task beyond the task's own compute (target < 0.1 s): sweeps of
  N1 and N2 ``demo.busy`` tasks of ``c`` seconds on one worker; the slope of
  wall time in N minus c is the steady-state overhead (pickling, scheduling,
  the shard, the log), the intercept is the pool start-up;
* the share of wall time spent writing HDF5 shards (target < 5%): the
  writers' own timers (create, write, fsync, rename) against the workers' busy
  time, for phase-diagram tasks of the default study (the representative
  sweep) and for the 0.25 s demo tasks of the scaling runs;
* throughput scaling from 1 to 2 workers (target >= 1.8x): whole-sweep wall
  time (start-up included) and steady state (first task start to last task end).

Usage: ``python -m studies.benchmarks.bench_sweep [--quick] [--out FILE]``.
The CPU may be shared: ``--quick`` is a sanity run, the full size is the one to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from studies.sweep import LocalExecutor, parse_spec, run_sweep


def _spec(name: str, task: str, n_tasks: int, params: dict, root_seed: int = 0):
    return parse_spec({"sweep": {"name": name, "task": task, "root_seed": root_seed, "seeds": n_tasks}, "params": params})


def _run(spec, workers: int, tmp: Path):
    out = tmp / f"{spec.name}-{workers}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    res = run_sweep(spec, out, executor=LocalExecutor(workers=workers), progress=False)
    wall = time.perf_counter() - t0
    assert res.failed == 0, [o.error for o in res.outcomes if o.status != "complete"]
    starts = np.array([o.started_at for o in res.outcomes])
    ends = np.array([o.finished_at for o in res.outcomes])
    shutil.rmtree(out, ignore_errors=True)
    return {
        "wall_s": wall,
        "steady_s": float(ends.max() - starts.min()),
        "busy_s": float(np.sum(ends - starts)),
        "compute_s": float(sum(o.compute_s for o in res.outcomes)),
        "write_s": float(sum(o.write_s for o in res.outcomes)),
        "n": len(res.outcomes),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sanity size")
    p.add_argument("--out", default="benchmark_results/sweep.json")
    args = p.parse_args(argv)
    c = 0.05 if args.quick else 0.1
    n1, n2 = (4, 12) if args.quick else (8, 48)
    n_scale, c_scale = (12, 0.1) if args.quick else (64, 0.25)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        a = _run(_spec("busy_a", "demo.busy", n1, {"seconds": c}), 1, tmp)
        b = _run(_spec("busy_b", "demo.busy", n2, {"seconds": c}), 1, tmp)
        slope = (b["wall_s"] - a["wall_s"]) / (n2 - n1)
        overhead = slope - c
        startup = a["wall_s"] - n1 * slope
        in_worker = (b["busy_s"] - b["compute_s"]) / n2  # log, marker, shard, bookkeeping inside the worker
        s1 = _run(_spec("scale", "demo.busy", n_scale, {"seconds": c_scale}), 1, tmp)
        s2 = _run(_spec("scale", "demo.busy", n_scale, {"seconds": c_scale}), 2, tmp)
        flow = _spec("flow", "flow.phase_point", 8 if args.quick else 24,
                     {"n": 32, "d": 8, "batch": 32, "t_end": 30.0, "n_save": 61, "backend": "numpy"})
        f = _run(flow, 2, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "size": "quick" if args.quick else "full",
        "overhead": {
            "task_seconds": c,
            "n_tasks": [n1, n2],
            "walls_s": [a["wall_s"], b["wall_s"]],
            "per_task_overhead_s": overhead,
            "in_worker_overhead_s": in_worker,
            "pool_startup_s": startup,
            "per_task_overhead_with_startup_s": (b["wall_s"] - n2 * c) / n2,
            "target_s": 0.1,
            "pass": overhead < 0.1,
        },
        "hdf5_share": {
            "demo_tasks": s2["write_s"] / s2["busy_s"],
            "flow_tasks": f["write_s"] / f["busy_s"],
            "write_per_shard_ms": 1e3 * (s2["write_s"] + f["write_s"]) / (s2["n"] + f["n"]),
            "flow_task_compute_s": f["compute_s"] / f["n"],
            "target": 0.05,
            "pass": f["write_s"] / f["busy_s"] < 0.05 and s2["write_s"] / s2["busy_s"] < 0.05,
        },
        "scaling": {
            "n_tasks": n_scale,
            "task_seconds": c_scale,
            "wall_1_s": s1["wall_s"],
            "wall_2_s": s2["wall_s"],
            "speedup_wall": s1["wall_s"] / s2["wall_s"],
            "speedup_steady": s1["steady_s"] / s2["steady_s"],
            "target": 1.8,
            "pass": s1["wall_s"] / s2["wall_s"] >= 1.8,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    o, h, s = result["overhead"], result["hdf5_share"], result["scaling"]
    print(f"overhead per task: {o['per_task_overhead_s'] * 1e3:.1f} ms (in worker {o['in_worker_overhead_s'] * 1e3:.1f} ms; "
          f"pool start-up {o['pool_startup_s']:.2f} s) target < 100 ms: {'PASS' if o['pass'] else 'FAIL'}")
    print(f"HDF5 share of wall time: demo {100 * h['demo_tasks']:.2f}%, flow {100 * h['flow_tasks']:.2f}% "
          f"({h['write_per_shard_ms']:.1f} ms per shard) target < 5%: {'PASS' if h['pass'] else 'FAIL'}")
    print(f"1 -> 2 workers: {s['speedup_wall']:.2f}x wall, {s['speedup_steady']:.2f}x steady state, "
          f"target >= 1.8x: {'PASS' if s['pass'] else 'FAIL'}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
