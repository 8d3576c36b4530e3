"""The documentation: every Python block of docs/ runs, the gallery is complete and small, and
(marked ``docs``) ``mkdocs build --strict`` passes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)


def test_docs_have_pages_and_python_examples():
    assert (ROOT / "mkdocs.yml").is_file() and len(PAGES) >= 10
    assert sum(len(BLOCK.findall(p.read_text())) for p in PAGES) >= 5


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())],
                         ids=lambda p: str(p.relative_to(DOCS)))
def test_python_blocks_run(page, tmp_path, monkeypatch, capsys):
    """The blocks of a page run in order, in one namespace, in an empty folder; what they print
    after `# True` comments is checked."""
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__docs__"}
    for i, block in enumerate(BLOCK.findall(page.read_text())):
        exec(compile(block, f"{page.relative_to(ROOT)} block {i}", "exec"), ns)
        claimed_true = sum(1 for line in block.splitlines() if line.rstrip().endswith("# True"))
        out = capsys.readouterr().out.split()
        assert out.count("True") >= claimed_true, (page.name, i, out)
        assert "False" not in out, (page.name, i, out)


def test_gallery_images_exist_and_are_small():
    text = (DOCS / "gallery.md").read_text()
    images = re.findall(r"\]\((gallery/[^)]+\.png)\)", text)
    assert len(images) >= 10
    for rel in images:
        png = DOCS / rel
        assert png.is_file(), rel
        assert png.stat().st_size < 300_000, rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every figure comes with the command that made it
    assert text.count("```bash") >= 8 and "attnflow study" in text and "attnflow plot" in text


def test_api_pages_reference_the_top_level_packages():
    for name in ("attnflow", "particles", "integrators"):
        refs = re.findall(r"^::: (\S+)", (DOCS / "api" / f"{name}.md").read_text(), flags=re.M)
        assert refs and all(r.split(".")[0] == name and r.count(".") <= 1 for r in refs), refs


@pytest.mark.docs
def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "gallery" / "collapse.png").is_file()
    api = (tmp_path / "site" / "api" / "particles" / "index.html").read_text()
    assert "SelfAttention" in api and "Parameters" in api  # rendered from the docstrings
