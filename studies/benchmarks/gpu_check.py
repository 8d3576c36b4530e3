"""Every GPU check in one command: the ``gpu`` tests, then the GPU benchmark.

    python -m studies.benchmarks.gpu_check [--out DIR] [--quick] [--tests-only]

Meant for the few minutes one has on a borrowed GPU: it writes everything it finds
into ``DIR`` (default ``gpu_results/``) as it goes, so that a run cut short still
leaves what it measured:

* ``environment.json`` -- the GPU, its driver's CUDA version, torch, triton, numba,
  Python;
* ``pytest-gpu.log`` and ``pytest-gpu.xml`` -- ``pytest -m gpu`` (one process: the
  CUDA tests share one device), its log and JUnit report;
* ``bench_gpu.json`` and ``bench_gpu.txt`` -- ``python -m studies.benchmarks.bench_gpu``
  (``--quick`` passes its small sizes), every ratio against its target.

Exit status: 0 when every gpu test passed and the benchmark ran to its end (its table
says which targets were met); 1 when a test failed or the benchmark broke off; 2
without CUDA (nothing run beyond the environment record), so that a script cannot
mistake "no GPU" for "all good".
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["environment", "main"]


def environment() -> dict:
    """What the checks ran on: GPU, CUDA, and the versions of the packages that matter."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
    }
    if env["cuda_available"]:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    for name in ("triton", "numba", "torchsde", "h5py"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    return env


def _tests(out: Path) -> int:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-n", "0", "-q", "-rA", f"--junitxml={out / 'pytest-gpu.xml'}"]
    with open(out / "pytest-gpu.log", "w") as log:
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    print(f"pytest -m gpu: exit {rc} ({out / 'pytest-gpu.log'})")
    return rc


def _bench(out: Path, quick: bool) -> int:
    cmd = [sys.executable, "-m", "studies.benchmarks.bench_gpu", "--out", str(out / "bench_gpu.json")]
    if quick:
        cmd.append("--quick")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    (out / "bench_gpu.txt").write_text(res.stdout + res.stderr)
    print(res.stdout, end="")
    if res.returncode != 0:
        print(f"bench_gpu: exit {res.returncode} (see {out / 'bench_gpu.txt'})")
    return res.returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_results", help="folder for the logs, reports and JSON (default gpu_results)")
    p.add_argument("--quick", action="store_true", help="the benchmark's small sizes (a smoke run)")
    p.add_argument("--tests-only", action="store_true", help="run the gpu tests, not the benchmark")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    print(json.dumps(env))
    if not env["cuda_available"]:
        print("gpu_check: no CUDA device; nothing run (exit 2)")
        return 2
    failed = _tests(out) != 0
    if not args.tests_only:
        failed = (_bench(out, args.quick) != 0) or failed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
