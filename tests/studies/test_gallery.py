"""The gallery framework (issue 13 item 2): JSON entry, figures under 300 KB, table, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from studies.papers.gallery import MAX_PNG_BYTES, check_rows, format_value, markdown_table, shrink_png, write_entry
from studies.papers.gallery_stats import bootstrap_se, censored_median, first_crossing
from studies.sweep import SerialExecutor

GALLERY = [sys.executable, "-m", "studies.papers.gallery"]


@pytest.fixture(scope="module")
def collapse_smoke(tmp_path_factory):
    from studies.papers import collapse

    out = tmp_path_factory.mktemp("collapse")
    collapse.run(out, "smoke", executor=SerialExecutor(), progress=False)
    return out


def test_cli_writes_json_with_finite_numbers_and_small_figures(collapse_smoke, tmp_path):
    into = tmp_path / "gallery"
    r = subprocess.run(GALLERY + ["collapse", "--out", str(collapse_smoke), "--into", str(into), "--seconds", "5.5",
                                  "--size", "smoke"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads((into / "collapse.json").read_text())
    assert doc["study"] == "collapse" and doc["size"] == "smoke" and doc["wall_seconds"] == 5.5
    assert len(doc["git_commit"]) >= 7 and doc["command"].startswith("attnflow study collapse --size smoke")
    assert doc["figures"] == ["collapse.png"]
    assert (into / "collapse.png").stat().st_size < MAX_PNG_BYTES
    numbers = [r["ours"] for r in doc["rows"] if r["ours"] is not None] + [r["se"] for r in doc["rows"] if r["se"] is not None]
    assert numbers and all(math.isfinite(v) for v in numbers)
    # the printed table has one line per row under its two header lines
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert len(table) == len(doc["rows"]) + 2
    assert not list(into.glob("*.h5"))  # never the raw HDF5


def test_wrong_study_name_is_a_one_line_error(tmp_path):
    r = subprocess.run(GALLERY + ["no-such-study", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "unknown study 'no-such-study'" in r.stderr


def test_missing_outputs_is_a_one_line_error(tmp_path):
    r = subprocess.run(GALLERY + ["collapse", "--out", str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "collapse.h5 not found" in r.stderr


def test_shrink_png_gets_a_noisy_figure_under_the_limit(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    # smooth colour gradients plus noise: far above 300 KB as a true-colour PNG
    y, x = np.mgrid[0:900, 0:1400]
    img = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1) + rng.integers(0, 40, (900, 1400, 3))
    src = tmp_path / "big.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(src)
    assert src.stat().st_size > MAX_PNG_BYTES
    dst = shrink_png(src, tmp_path / "small.png")
    assert dst.stat().st_size <= MAX_PNG_BYTES
    assert Image.open(dst).size[0] > 200  # still a figure, not a thumbnail
    # a small PNG is copied unchanged
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tiny)
    assert shrink_png(tiny, tmp_path / "tiny2.png").read_bytes() == tiny.read_bytes()


def test_rows_are_checked_and_rendered():
    rows = check_rows([{"quantity": "q", "where": "d = 2", "ours": np.float64(3.4123), "se": 0.052, "paper": None,
                        "reference": "ODE: 3.41", "source": "GLPR Fig. 3"},
                       {"quantity": "r", "where": "x", "ours": float("nan"), "source": "S"}])
    assert rows[0]["ours"] == 3.4123 and rows[1]["ours"] is None and rows[1]["se"] is None
    table = markdown_table(rows).splitlines()
    assert table[2] == "| q | d = 2 | 3.41 ± 0.05 | — | ODE: 3.41 | GLPR Fig. 3 |"
    assert table[3].startswith("| r | x | — |")
    with pytest.raises(ValueError, match="unknown"):
        check_rows([{"quantity": "q", "where": "", "ours": 1.0, "source": "", "typo": 1}])
    assert format_value(6.7, 0.12) == "6.70 ± 0.12" and format_value(31.3, 4.9) == "31 ± 5"
    assert format_value(None) == "—"


def test_censored_median_bootstrap_and_crossing():
    x = np.array([1.0, 2.0, 3.0, np.nan, np.nan])
    assert censored_median(x) == 3.0  # the NaNs count as later than every finite time
    assert np.isnan(censored_median(np.array([1.0, np.nan, np.nan])))
    # the bootstrap SE of a mean is close to sd / sqrt(n)
    s = np.random.default_rng(1).standard_normal(400)
    assert abs(bootstrap_se(s, np.mean, n_boot=800) / (s.std() / 20) - 1) < 0.15
    assert first_crossing([0, 1, 2], [0.0, 0.4, 0.8], 0.5) == pytest.approx(1.25)
    assert np.isnan(first_crossing([0, 1], [0.1, 0.2], 0.5)) and first_crossing([0, 1], [0.6, 0.9], 0.5) == 0
