"""The README's Python example runs and does what it says; .ci/run calls the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "solve(" in b)
    ns: dict = {}
    exec(compile(example, "README.md", "exec"), ns)
    sol = ns["sol"]
    assert sol.t.shape == (41,) and sol.x.shape == (41, 8, 32, 3)
    counts = sol.observables["cluster_count"][-1]
    assert counts.shape == (8,) and counts.min() >= 1


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (ROOT / "README.md").read_text()
