"""Slurm job arrays: an sbatch script whose array indices run the sweep's tasks.

Each array index runs ``attnflow sweep run SPEC --out OUT --task-index I --resume``
(with ``chunk`` > 1: ``--task-index I*chunk --task-count chunk``), so the array
size is the task count (or ``ceil(tasks / chunk)``). ``--resume`` makes a
re-queued or re-submitted index skip a task that already has a complete shard.
The same ``--task-index`` entry serves any scheduler's arrays (PBS ``$PBS_ARRAY_INDEX``,
SGE ``$SGE_TASK_ID - 1``, LSF ``$LSB_JOBINDEX - 1``).

With ``gpus_per_task`` N > 0 each array task asks for ``--gres=gpu:N``; Slurm sets its
``CUDA_VISIBLE_DEVICES`` and the command gets ``--gpus 1`` (its tasks run one after the other
on that GPU), or for N > 1 ``--executor local --gpus N`` (its chunk runs on a pool of N
workers, one per GPU).
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from integrators.validation import ParameterError, check_positive_int

from .shards import atomic_write_text

__all__ = ["sbatch_script", "write_sbatch", "submit_sbatch", "attnflow_command"]

_SAFE = re.compile(r"^[A-Za-z0-9_:.,=\-+/@%]+$")  # one sbatch option value, no spaces or newlines


def _opt(name: str, value) -> str:
    s = str(value)
    if not _SAFE.match(s):
        raise ParameterError(name, f"unexpected characters in {s!r}")
    return s


def attnflow_command() -> list[str]:
    """How to call attnflow on the compute nodes: the console script next to this Python, else ``python -m``."""
    cand = Path(sys.executable).parent / "attnflow"
    if cand.is_file():
        return [str(cand)]
    found = shutil.which("attnflow")
    return [found] if found else [sys.executable, "-m", "studies.cli"]


def sbatch_script(
    spec_path: str | Path,
    out: str | Path,
    n_tasks: int,
    *,
    name: str,
    chunk: int = 1,
    time: str = "01:00:00",
    cpus_per_task: int = 1,
    mem: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    max_parallel: int | None = None,
    extra: tuple[str, ...] = (),
    allow_code_tasks: bool = False,
    gpus_per_task: int = 0,
) -> str:
    """Text of an sbatch array script for ``n_tasks`` tasks (array size ``ceil(n_tasks / chunk)``).

    ``gpus_per_task``: GPUs per array task (``#SBATCH --gres=gpu:N``; 0: none, no line).

    ``extra`` lines are added verbatim after the generated ``#SBATCH`` lines
    (e.g. ``"#SBATCH --qos=long"`` or ``"module load python"``).
    """
    n_tasks = check_positive_int("n_tasks", n_tasks)
    chunk = check_positive_int("chunk", chunk)
    cpus = check_positive_int("cpus_per_task", cpus_per_task)
    gpus = check_positive_int("gpus_per_task", gpus_per_task, minimum=0)
    size = math.ceil(n_tasks / chunk)
    out = Path(out).resolve()
    spec_path = Path(spec_path).resolve()
    array = f"0-{size - 1}" + (f"%{check_positive_int('max_parallel', max_parallel)}" if max_parallel else "")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=attnflow-{_opt('name', name)}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={_opt('out', out / 'slurm')}/%x-%A_%a.out",
        f"#SBATCH --time={_opt('time', time)}",
        f"#SBATCH --cpus-per-task={cpus}",
        "#SBATCH --ntasks=1",
    ]
    if mem is not None:
        lines.append(f"#SBATCH --mem={_opt('mem', mem)}")
    if partition is not None:
        lines.append(f"#SBATCH --partition={_opt('partition', partition)}")
    if account is not None:
        lines.append(f"#SBATCH --account={_opt('account', account)}")
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    for e in extra:
        if "\n" in e:
            raise ParameterError("extra", "one line per entry")
        lines.append(e)
    index = "$SLURM_ARRAY_TASK_ID" if chunk == 1 else f"$((SLURM_ARRAY_TASK_ID * {chunk})) --task-count {chunk}"
    cmd = " ".join(shlex.quote(c) for c in attnflow_command())
    lines += [
        "",
        f"# sweep {name}: {n_tasks} task(s), {chunk} per array index; spec {spec_path}",
        "set -euo pipefail",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" OPENBLAS_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" '
        'MKL_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" NUMBA_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        f"cd {shlex.quote(str(Path.cwd()))}",
        f"exec {cmd} sweep run {shlex.quote(str(spec_path))} --out {shlex.quote(str(out))} "
        f"--task-index {index} --resume --no-progress" + (" --allow-code-tasks" if allow_code_tasks else "")
        + ("" if not gpus else " --gpus 1" if gpus == 1 else f" --executor local --gpus {gpus}"),
        "",
    ]
    return "\n".join(lines)


def write_sbatch(spec, spec_path: str | Path, out: str | Path, **options) -> Path:
    """Write ``OUT/slurm/<name>.sbatch`` for ``spec`` and return its path."""
    out = Path(out).resolve()
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    path = out / "slurm" / f"{spec.name}.sbatch"
    atomic_write_text(path, sbatch_script(spec_path, out, spec.n_tasks, name=spec.name, **options))
    path.chmod(0o755)
    return path


def submit_sbatch(script: Path) -> str:
    """Submit with ``sbatch --parsable``; returns the job id."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise FileNotFoundError(f"sbatch is not on PATH; the script is written at {script}: submit it on the cluster")
    res = subprocess.run([exe, "--parsable", str(script)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"sbatch failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout.strip().split(";")[0]
