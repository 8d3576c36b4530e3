"""Size and speed of streamed HDF5 runs per compression: file size over data size, and time against no compression.

    python -m studies.benchmarks.bench_store [--repeats R] [--out FILE]

Writes random-walk trajectories on the sphere through :class:`studies.store.RunWriter`
(SWMR, a flush per save, as ``attnflow simulate`` does) with two observables per
save, for three cases: (batch, n, d, saves) = (4, 32, 3, 1001), (8, 128, 3, 301)
and (16, 8, 8, 101) (a shaped-block-sized state). Reported per case and compression: the
best of ``repeats`` wall times, its ratio to ``none``, the data bytes (every dataset's
values) and the file size over the data. Targets: file <= 1.2x data; ``none`` is the
default, and a compression costs what compressing the frames costs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from studies.store.reader import data_bytes

__all__ = ["CASES", "measure", "main"]

CASES = ((4, 32, 3, 1001), (8, 128, 3, 301), (16, 8, 8, 101))
COMPRESSIONS = ("none", "gzip", "lzf")


def _write(path: Path, shape: tuple[int, ...], saves: int, compression: str) -> float:
    from studies.store import RunWriter

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    frames = []
    for _ in range(saves):  # drawn before timing: only the writing is measured
        x = x + 0.01 * rng.standard_normal(shape)
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        frames.append(x)
    t0 = time.perf_counter()
    with RunWriter(path, model="sa", method="rk4", dt=0.01, backend="numpy", compression=compression,
                   overwrite=True) as w:  # fmt: skip
        for k, f in enumerate(frames):
            w.append(0.01 * k, f, {"energy": f[:, 0, 0], "cluster_count": np.ones(shape[0], dtype=np.int64)})
    return time.perf_counter() - t0


def measure(repeats: int = 3) -> list[dict]:
    """One row per (case, compression): seconds (best of ``repeats``), data and file bytes."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch, n, d, saves in CASES:
            base = None
            for comp in COMPRESSIONS:
                path = Path(tmp) / f"{comp}.h5"
                secs = min(_write(path, (batch, n, d), saves, comp) for _ in range(repeats))
                base = secs if comp == "none" else base
                data, size = data_bytes(path), os.path.getsize(path)
                rows.append({"batch": batch, "n": n, "d": d, "saves": saves, "compression": comp, "seconds": secs,
                             "time_vs_none": secs / base, "data_bytes": data, "file_bytes": size,
                             "file_over_data": size / data})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.benchmarks.bench_store", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timings per configuration; the best is kept (default 3)")
    p.add_argument("--out", default="benchmark_results/store.json", help="JSON output")
    args = p.parse_args(argv)
    rows = measure(args.repeats)
    table = [f"{'case':<22} {'compression':<11} {'seconds':>8} {'vs none':>8} {'data MB':>8} {'file/data':>9}"]
    for r in rows:
        case = f"{r['batch']}x{r['n']}x{r['d']}, {r['saves']} saves"
        table.append(f"{case:<22} {r['compression']:<11} {r['seconds']:8.3f} {r['time_vs_none']:8.2f} "
                     f"{r['data_bytes'] / 1e6:8.3f} {r['file_over_data']:9.3f}")  # fmt: skip
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
