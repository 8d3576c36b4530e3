"""``attnflow sweep run | submit | merge | status``: parameter sweeps from a TOML spec.

SPEC is a spec file, or a sweep output directory (its saved ``spec.toml`` is
used and it is the default ``--out``).

Examples::

    attnflow sweep run studies/papers/default.toml --out runs/default --workers 2
    attnflow sweep run spec.toml --out runs/x --resume                 # after a crash
    attnflow sweep run spec.toml --executor dask --scheduler tcp://head:8786
    attnflow sweep run spec.toml --executor dask --jobqueue slurm --jobs 10 --cores 8 --memory 16GB
    attnflow sweep submit spec.toml --out /scratch/x --time 02:00:00 --partition cpu
    attnflow sweep run spec.toml --out runs/x --gpus 2                  # one worker per GPU
    attnflow sweep run spec.toml --executor dask --cuda-cluster        # dask-cuda, every visible GPU
    attnflow sweep submit spec.toml --out /scratch/x --gpus-per-task 1 # --gres=gpu:1 per array task
    attnflow sweep run spec.toml --out /scratch/x --task-index 17       # one task (array jobs)
    attnflow sweep status runs/x
    attnflow sweep merge runs/x                                        # -> runs/x/<name>.h5

Specs name registered tasks (``flow.phase_point``, ``cov.rho_law``, ...); a
``task = "module:function"`` spec imports and runs that code, so ``run`` and
``submit`` refuse it without ``--allow-code-tasks``. ``status`` and ``merge``
never import a task module. A run holds a lock on its output directory; SIGINT
or SIGTERM stop it within seconds (running tasks are recorded as interrupted,
``--resume`` continues).

GPUs: each worker process is given one device (``--gpus N`` takes the first N visible,
``--devices 0,1,3`` names them; worker k gets device k mod N) and sets its own
``CUDA_VISIBLE_DEVICES`` to it before CUDA starts; tasks on the torch backend run there,
numpy and numba tasks are unaffected. The shards record the device.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

__all__ = ["register"]


def _spec_and_out(args, allow_code_tasks: bool = False) -> tuple:
    from studies.sweep import default_out, load_spec

    path = Path(args.spec)
    if path.is_dir():
        spec_file = path / "spec.toml"
        if not spec_file.is_file():
            raise FileNotFoundError(f"{path} is a directory without spec.toml (not a sweep output directory)")
        spec = load_spec(spec_file, allow_code_tasks=allow_code_tasks)
        out = Path(args.out) if args.out else path
    else:
        spec = load_spec(path, allow_code_tasks=allow_code_tasks)
        out = Path(args.out) if args.out else default_out(spec)
    return spec, out


def _stored_spec_and_out(args) -> tuple:
    """For status and merge: the spec as the store ran it (``spec.json``), importing no task module.

    A spec file naming a registered task is read as before; one naming
    ``module:function`` is replaced by the store's record of it.
    """
    import tomllib

    from studies.sweep import default_out
    from studies.sweep.spec import spec_from_store
    from studies.sweep.tasks import is_code_task

    from studies.errors import UserError

    path = Path(args.spec)
    if path.is_dir():
        spec = spec_from_store(path)
        if spec is not None:
            return spec, Path(args.out) if args.out else path
        return _spec_and_out(args)
    try:
        task = tomllib.loads(path.read_text()).get("sweep", {}).get("task")
    except (OSError, tomllib.TOMLDecodeError):
        task = None
    if not is_code_task(task):
        return _spec_and_out(args)
    if not args.out:
        raise UserError(f"{path} names the code task {task!r}: give the sweep's output directory (--out DIR, or DIR "
                        "instead of the spec) so that its recorded spec is used and no module is imported")
    spec = spec_from_store(args.out)
    if spec is None:
        raise UserError(f"{args.out} holds no spec.json (written when a sweep runs): nothing to report")
    return spec, Path(args.out)


def _devices(args) -> tuple[str, ...]:
    """The GPUs asked for (``--gpus``, ``--devices``, ``--cuda-cluster``); () for none."""
    from studies.sweep.devices import require_dask_cuda, resolve_devices

    from studies.errors import UserError

    if args.cuda_cluster:
        if args.executor != "dask":
            raise UserError("--cuda-cluster needs --executor dask")
        if args.scheduler or args.jobqueue:
            raise UserError("--cuda-cluster starts its own cluster: not with --scheduler or --jobqueue")
        require_dask_cuda()
    if args.gpus is None and args.devices is None:
        return resolve_devices("all") if args.cuda_cluster else ()
    if args.scheduler or args.jobqueue:
        raise UserError("--gpus and --devices are for the workers this command starts, not with --scheduler or "
                        "--jobqueue (start those workers with dask-cuda-worker)")
    return resolve_devices(args.gpus, args.devices)


def _executor(args):
    from studies.sweep import DaskExecutor, LocalExecutor, SerialExecutor, jobqueue_cluster

    from studies.errors import UserError

    if args.executor != "dask" and (args.scheduler or args.jobqueue):
        raise UserError("--scheduler and --jobqueue need --executor dask")
    devices = _devices(args)
    if args.executor == "serial" or (args.executor is None and args.task_index is not None):
        return SerialExecutor(threads=args.threads_per_worker, devices=devices)
    if args.executor in (None, "local"):
        return LocalExecutor(workers=args.workers, threads_per_worker=args.threads_per_worker or 1, devices=devices)
    if args.jobqueue:
        if args.cores is None or args.memory is None:
            raise UserError("--jobqueue needs --cores and --memory (per job)")
        cluster = jobqueue_cluster(args.jobqueue, jobs=args.jobs, cores=args.cores, memory=args.memory,
                                   walltime=args.walltime, queue=args.queue, account=args.account)
        return DaskExecutor(cluster=cluster, threads_per_worker=args.threads_per_worker or 1)
    return DaskExecutor(address=args.scheduler, workers=None if args.scheduler else args.workers,
                        threads_per_worker=args.threads_per_worker or 1, devices=devices,
                        cuda_cluster=args.cuda_cluster)


def _run(args) -> int:
    from studies.sweep import SweepInterrupted, merge_sweep, run_sweep

    spec, out = _spec_and_out(args, allow_code_tasks=args.allow_code_tasks)
    executor = _executor(args)
    try:
        res = run_sweep(spec, out, executor=executor, resume=args.resume, retries=args.retries,
                        task_index=args.task_index, task_count=args.task_count, progress=not args.no_progress,
                        yes=args.yes)
    except SweepInterrupted as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # more presses while exiting: no traceback
        print(f"attnflow sweep: interrupted by {exc}: workers stopped, running tasks recorded as interrupted; "
              f"`attnflow sweep run {out} --resume` continues", file=sys.stderr)
        return 128 + exc.signum
    finally:
        executor.close()
    print(f"{spec.name}: {res.total} task(s): {res.skipped} already complete, {res.completed} completed, "
          f"{res.failed} failed in {res.wall_s:.1f} s -> {res.out}")
    if args.merge:
        m = merge_sweep(spec, out, allow_mixed=args.allow_mixed)
        print(f"merged -> {m.path} ({m.status})")
    return 0 if res.ok else 1


def _submit(args) -> int:
    from studies.sweep import submit_sbatch, write_sbatch

    spec, out = _spec_and_out(args, allow_code_tasks=args.allow_code_tasks)
    if Path(args.spec).is_dir():
        spec_path = Path(args.spec) / "spec.toml"
    else:
        spec_path = Path(args.spec)
    script = write_sbatch(spec, spec_path, out, chunk=args.chunk, time=args.time, cpus_per_task=args.cpus_per_task,
                          mem=args.mem, partition=args.partition, account=args.account,
                          max_parallel=args.max_parallel, extra=tuple(args.extra or ()),
                          allow_code_tasks=args.allow_code_tasks, gpus_per_task=args.gpus_per_task)
    print(f"wrote {script} ({spec.n_tasks} task(s))")
    if args.dry_run:
        return 0
    job = submit_sbatch(script)
    print(f"submitted job array {job}")
    return 0


def _merge(args) -> int:
    from studies.sweep import merge_sweep

    spec, out = _stored_spec_and_out(args)
    m = merge_sweep(spec, out, args.output, allow_mixed=args.allow_mixed)
    print(f"merged {m.complete}/{m.total} complete task(s) -> {m.path} ({m.status})")
    return 0


def _status(args) -> int:
    from studies.sweep import format_status, sweep_status

    spec, out = _stored_spec_and_out(args)
    st = sweep_status(spec, out)
    print(json.dumps(st.as_dict(), indent=1) if args.json else format_status(st))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="parameter sweeps: run, submit to Slurm, merge, status",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sweep_command", metavar="ACTION")
    sub.required = True

    def common(q):
        q.add_argument("spec", help="sweep spec (TOML) or a sweep output directory")
        q.add_argument("--out", help="output directory (default: [sweep] out, else ./sweep-NAME)")

    r = sub.add_parser("run", help="run the tasks (all, or --task-index)")
    common(r)
    r.add_argument("--executor", choices=("local", "serial", "dask"),
                   help="local process pool (default), serial (this process) or dask")
    r.add_argument("--workers", type=int,
                   help="worker processes (local pool or Dask LocalCluster; default: CPUs, or the GPUs given)")
    r.add_argument("--gpus", metavar="N|all",
                   help="one GPU per worker: the first N visible (CUDA_VISIBLE_DEVICES, else 0..N-1), worker k "
                        "gets GPU k mod N; torch-backend tasks run there (default: none, the CPU)")
    r.add_argument("--devices", metavar="IDS",
                   help="like --gpus, naming the GPUs: CUDA_VISIBLE_DEVICES entries, e.g. 0,1,3")
    r.add_argument("--cuda-cluster", action="store_true",
                   help="with --executor dask: start dask-cuda's LocalCUDACluster, one worker per GPU "
                        "(every visible one unless --gpus/--devices; needs the [cuda-cluster] extra)")
    r.add_argument("--threads-per-worker", type=int, help="BLAS/numba/torch threads per task (default 1)")
    r.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://head:8786")
    r.add_argument("--jobqueue", choices=("slurm", "pbs", "sge", "lsf", "htcondor", "oar", "moab"),
                   help="start a dask-jobqueue cluster of this kind")
    r.add_argument("--jobs", type=int, default=1, help="jobqueue: number of jobs")
    r.add_argument("--cores", type=int, help="jobqueue: cores per job")
    r.add_argument("--memory", help="jobqueue: memory per job, e.g. 16GB")
    r.add_argument("--walltime", help="jobqueue: walltime per job, e.g. 02:00:00")
    r.add_argument("--queue", help="jobqueue: queue / partition")
    r.add_argument("--account", help="jobqueue: account")
    r.add_argument("--resume", action="store_true", help="skip tasks with complete shards, re-run the others")
    r.add_argument("--retries", type=int, help="extra attempts after a failure (default: the spec's retries)")
    r.add_argument("--task-index", type=int, help="run only task I (0-based; for scheduler array jobs)")
    r.add_argument("--task-count", type=int, default=1, help="with --task-index: run tasks I .. I+K-1")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--merge", action="store_true", help="merge the shards when done")
    r.add_argument("--allow-mixed", action="store_true", help="with --merge: as for `sweep merge --allow-mixed`")
    r.add_argument("--yes", action="store_true", help="run even if the sweep has more than 100,000 tasks")
    r.add_argument("--allow-code-tasks", action="store_true",
                   help="allow a spec whose task is 'module:function' (imports and runs that code)")
    r.set_defaults(func=_run)

    s = sub.add_parser("submit", help="write a Slurm array script (and submit it with sbatch)")
    common(s)
    s.add_argument("--time", default="01:00:00", help="walltime per array task (default 01:00:00)")
    s.add_argument("--cpus-per-task", type=int, default=1)
    s.add_argument("--gpus-per-task", type=int, default=0,
                   help="GPUs per array task: #SBATCH --gres=gpu:N, its tasks run there (default 0: none)")
    s.add_argument("--mem", help="memory per array task, e.g. 4G")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--max-parallel", type=int, help="at most this many array tasks at once (%%N)")
    s.add_argument("--chunk", type=int, default=1, help="tasks per array index (array size = ceil(tasks/chunk))")
    s.add_argument("--extra", action="append", help="extra line for the script, e.g. '#SBATCH --qos=long' (repeatable)")
    s.add_argument("--dry-run", action="store_true", help="write the script, do not call sbatch")
    s.add_argument("--allow-code-tasks", action="store_true",
                   help="allow a spec whose task is 'module:function' (passed on to the array jobs)")
    s.set_defaults(func=_submit)

    m = sub.add_parser("merge", help="gather the shards into one study file (xarray-readable)")
    common(m)
    m.add_argument("--output", help="study file (default OUT/NAME.h5)")
    m.add_argument("--allow-mixed", action="store_true",
                   help="merge shards written by different code versions (the mix is recorded in the file)")
    m.set_defaults(func=_merge)

    st = sub.add_parser("status", help="done / running / failed / missing tasks")
    common(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_status)
