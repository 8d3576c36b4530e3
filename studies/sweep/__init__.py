"""Parameter sweeps: TOML specs, tasks with stable ids and seeds, executors, shards, merge.

Typical use::

    from studies.sweep import load_spec, run_sweep, merge_sweep, LocalExecutor
    spec = load_spec("studies/papers/default.toml")
    run_sweep(spec, "runs/default", executor=LocalExecutor(workers=2), resume=True)
    merge_sweep(spec, "runs/default")           # -> runs/default/default.h5
    # xarray.open_dataset("runs/default/default.h5", engine="h5netcdf")

The same tasks run on a process pool (:class:`LocalExecutor`), on Dask
(:class:`DaskExecutor`: LocalCluster, scheduler address, dask-jobqueue cluster),
or as Slurm array jobs (:func:`write_sbatch` + ``attnflow sweep run --task-index``); with GPUs,
one per worker process (:mod:`studies.sweep.devices`; a task asks :func:`task_device`).
"""

from .devices import resolve_devices, task_device
from .executors import EXECUTORS, JOBQUEUE_CLUSTERS, DaskExecutor, LocalExecutor, SerialExecutor, jobqueue_cluster
from .merge import STATUS_CODES, MergeResult, load_study, merge_sweep
from .plan import Task, canonical_json, plan_tasks, task_id, task_seed
from .lock import SweepLock
from .runner import LARGE_SWEEP, SweepError, SweepInterrupted, SweepResult, default_out, run_sweep, select_tasks
from .shards import Shard, Store, read_shard, write_shard
from .slurm import sbatch_script, submit_sbatch, write_sbatch
from .spec import Axis, SweepSpec, load_spec, parse_spec, spec_from_store
from .toml_writer import to_toml
from .status import SweepStatus, format_status, sweep_status
from .worker import ProgressWriter, TaskOutcome, TaskRun, execute_task, report_progress

__all__ = [
    "SweepSpec",
    "Axis",
    "load_spec",
    "parse_spec",
    "spec_from_store",
    "to_toml",
    "Task",
    "plan_tasks",
    "task_id",
    "task_seed",
    "canonical_json",
    "run_sweep",
    "SweepResult",
    "SweepError",
    "SweepInterrupted",
    "SweepLock",
    "LARGE_SWEEP",
    "default_out",
    "select_tasks",
    "LocalExecutor",
    "DaskExecutor",
    "SerialExecutor",
    "jobqueue_cluster",
    "EXECUTORS",
    "JOBQUEUE_CLUSTERS",
    "merge_sweep",
    "MergeResult",
    "load_study",
    "STATUS_CODES",
    "sweep_status",
    "format_status",
    "SweepStatus",
    "Store",
    "Shard",
    "read_shard",
    "write_shard",
    "sbatch_script",
    "write_sbatch",
    "submit_sbatch",
    "TaskRun",
    "TaskOutcome",
    "execute_task",
    "report_progress",
    "ProgressWriter",
    "task_device",
    "resolve_devices",
]
