"""bench_gpu without CUDA: a clear message and a clean exit."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_bench_gpu_without_cuda_says_so_and_exits_cleanly(tmp_path):
    from studies.benchmarks.bench_gpu import NO_CUDA

    out = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "studies.benchmarks.bench_gpu", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert NO_CUDA in p.stdout and not out.exists()
