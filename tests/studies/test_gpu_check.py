"""The one-command GPU check without a GPU: it records the environment and says so in its exit status."""

import json

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answer")
def test_without_cuda_exits_2_and_records_the_environment(tmp_path, capsys):
    from studies.benchmarks.gpu_check import main

    assert main(["--out", str(tmp_path / "g")]) == 2
    env = json.loads((tmp_path / "g" / "environment.json").read_text())
    assert env["cuda_available"] is False and env["torch"] == torch.__version__
    assert "numba" in env and "gpu" not in env
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["environment.json"]  # no test or bench run
    assert "no CUDA" in capsys.readouterr().out
