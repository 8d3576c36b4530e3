"""Which GPU a sweep task runs on: one device per worker process, chosen by the executor.

The executor hands each worker process one device id (round robin: worker ``k`` of a pool
gets ``devices[k mod G]``) and the worker sets ``CUDA_VISIBLE_DEVICES`` to that id before
anything initialises CUDA. This is the standard way (dask-cuda's ``LocalCUDACluster``,
Slurm's ``--gres=gpu``, ``torchrun``-style launchers do the same):

* the CUDA runtime reads the variable once, when it initialises, and then enumerates only
  that device, so it is ``cuda:0`` in the process and every library (torch, triton) uses it
  without being told;
* a task cannot allocate on a neighbour's GPU by mistake (an index into the wrong list);
* pool workers are *spawned*, not forked: a forked child inherits its parent's CUDA state,
  which CUDA does not support in a child, and the variable would be read too late.

A task asks :func:`task_device` ("cuda:0", or "cpu" when the executor gave it no GPU);
:func:`backend_device` is what the study tasks pass to ``solve(device=...)``: the given
device for the torch backend, nothing otherwise (numpy and numba run on the CPU), so a sweep
without GPU options runs exactly as before.

Device ids are what ``CUDA_VISIBLE_DEVICES`` accepts: an index (``3``) or a UUID
(``GPU-8d3a...``, ``MIG-...``). When the coordinator itself runs under
``CUDA_VISIBLE_DEVICES`` (a Slurm job given two GPUs sees ``0,1`` or ``2,3``), its entries
are the devices to hand out, not ``0 .. G-1``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Sequence

from integrators.validation import ParameterError

__all__ = ["CUDA_ENV", "Assignment", "parse_devices", "cuda_device_count", "visible_devices", "resolve_devices",
           "assign", "use_device", "using_device", "init_device_worker", "task_device", "device_assignment", "backend_device",
           "require_dask_cuda"]

CUDA_ENV = "CUDA_VISIBLE_DEVICES"
_ID = re.compile(r"^(?:\d+|(?:GPU|MIG)-[A-Za-z0-9/-]+)$")


@dataclass(frozen=True)
class Assignment:
    """The device a worker process was given.

    Attributes
    ----------
    slot : the worker's number in its pool (0, 1, ...; the round robin's ``k``).
    device_id : the ``CUDA_VISIBLE_DEVICES`` entry (the physical device).
    ordinal : the device's index inside this process (0 when the worker narrowed
        ``CUDA_VISIBLE_DEVICES`` to it).
    """

    slot: int
    device_id: str
    ordinal: int

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.ordinal}"


_assigned: Assignment | None = None


def parse_devices(text: str | Sequence[str], name: str = "devices") -> tuple[str, ...]:
    """Device ids from ``"0,1,3"`` (or a sequence of ids); ParameterError naming ``name`` when malformed."""
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    ids = tuple(t.strip() for t in items)
    if not ids or any(not _ID.match(t) for t in ids):
        raise ParameterError(name, f"expected comma-separated device indices or GPU-/MIG- UUIDs, e.g. 0,1,3; got {text!r}")
    if len(set(ids)) != len(ids):
        raise ParameterError(name, f"a device is listed twice in {text!r}")
    return ids


def cuda_device_count() -> int:
    """CUDA devices torch sees in this process (0 without torch or CUDA).

    torch counts through NVML where it can, without creating a CUDA context here.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return int(torch.cuda.device_count())


def visible_devices(count: int | None = None) -> tuple[str, ...]:
    """The device ids this process may hand out: its ``CUDA_VISIBLE_DEVICES`` entries, else ``0 .. count-1``.

    ``count`` defaults to :func:`cuda_device_count` (the devices CUDA really has).
    """
    count = cuda_device_count() if count is None else count
    env = os.environ.get(CUDA_ENV)
    if env is None:
        return tuple(str(k) for k in range(count))
    listed = [t.strip() for t in env.split(",") if t.strip()]
    return tuple(listed[:count])


def resolve_devices(gpus: int | str | None = None, devices: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The devices a sweep asked for: ``gpus`` (a count or "all") or an explicit ``devices`` list.

    Returns ``()`` when neither is given (the CPU). Raises ParameterError naming the option
    when CUDA has fewer devices than asked for (none at all on a CPU machine).
    """
    if gpus is not None and devices is not None:
        raise ParameterError("devices", "give --gpus or --devices, not both")
    if gpus is None and devices is None:
        return ()
    have = visible_devices()
    if devices is not None:
        ids = parse_devices(devices)
        if not have:
            raise ParameterError("devices", f"{','.join(ids)} asked for, but CUDA sees no device here "
                                            "(torch.cuda.device_count() is 0)")
        if os.environ.get(CUDA_ENV) is not None:
            outside = [d for d in ids if d not in have]
            if outside:
                raise ParameterError("devices", f"{','.join(outside)} not among this process's "
                                                f"{CUDA_ENV}={os.environ[CUDA_ENV]}")
        elif any(d.isdigit() and int(d) >= len(have) for d in ids):
            raise ParameterError("devices", f"CUDA has {len(have)} device(s) (0..{len(have) - 1}); got {','.join(ids)}")
        return ids
    if gpus == "all":
        n = len(have)
    else:
        try:
            n = int(gpus)
        except (TypeError, ValueError):
            raise ParameterError("gpus", f"expected a positive number or 'all', got {gpus!r}") from None
        if n < 1:
            raise ParameterError("gpus", f"expected a positive number or 'all', got {gpus!r}")
    if not have:
        raise ParameterError("gpus", "GPUs asked for, but CUDA sees no device here (torch.cuda.device_count() is 0)")
    if n > len(have):
        raise ParameterError("gpus", f"{n} GPUs asked for, {len(have)} visible ({','.join(have)})")
    return have[:n]


def assign(k: int, devices: Sequence[str]) -> str:
    """The device of worker ``k``: round robin, ``devices[k mod G]`` (workers share when there are more than G)."""
    if not devices:
        raise ParameterError("devices", "no device to assign")
    return devices[k % len(devices)]


def use_device(device_id: str, *, slot: int = 0, narrow: bool = True) -> Assignment:
    """Give this process ``device_id``.

    ``narrow``: set ``CUDA_VISIBLE_DEVICES`` to it (a fresh worker process: the device is then
    ``cuda:0``); refused once this process has initialised CUDA, when the variable is no longer
    read. Otherwise (the serial executor, a worker whose variable a launcher already set) the
    variable is left alone and the device is found in it.
    """
    global _assigned
    if narrow:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            raise RuntimeError(f"CUDA is already initialised in process {os.getpid()}: "
                               f"{CUDA_ENV}={device_id} would not take effect")
        os.environ[CUDA_ENV] = device_id
        ordinal = 0
    else:
        env = os.environ.get(CUDA_ENV)
        listed = [t.strip() for t in env.split(",")] if env is not None else None
        if listed is not None and device_id in listed:
            ordinal = listed.index(device_id)
        elif listed is None and device_id.isdigit():
            ordinal = int(device_id)
        else:
            raise ParameterError("devices", f"device {device_id} is not visible here ({CUDA_ENV}={env})")
    _assigned = Assignment(int(slot), str(device_id), ordinal)
    return _assigned


@contextlib.contextmanager
def using_device(device_id: str | None):
    """This process runs on ``device_id`` inside the block (``CUDA_VISIBLE_DEVICES`` untouched; the serial executor).

    The assignment before the block is restored after it, so a sweep run in-process leaves no trace.
    """
    global _assigned
    before = _assigned
    try:
        if device_id is not None:
            use_device(device_id, narrow=False)
        yield
    finally:
        _assigned = before


def init_device_worker(devices: Sequence[str], counter) -> None:
    """Pool-worker initializer: take the next slot from the shared ``counter`` and its device (round robin)."""
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    use_device(assign(k, devices), slot=k, narrow=True)


def device_assignment() -> Assignment | None:
    """What this process was given (None: no GPU; the task runs on the CPU)."""
    return _assigned


def task_device() -> str:
    """The torch device of the running task: ``"cuda:0"`` (its worker's GPU) or ``"cpu"``."""
    return "cpu" if _assigned is None else _assigned.torch_device


def backend_device(backend: str) -> str | None:
    """``solve(device=...)`` for a task on ``backend``: the given GPU on torch, else None (the default)."""
    if _assigned is None or backend != "torch":
        return None
    return _assigned.torch_device


def require_dask_cuda():
    """The ``dask_cuda`` module, or a ParameterError naming ``--cuda-cluster`` and the extra that installs it."""
    try:
        import dask_cuda
    except ImportError:
        raise ParameterError("cuda_cluster", "--cuda-cluster needs dask-cuda, an optional extra: "
                                             "pip install 'attnflow[cuda-cluster]'") from None
    return dask_cuda
