"""One GPU per Dask worker: a worker plugin that gives each worker process its device.

Imported only when a Dask sweep asks for GPUs (it needs ``distributed``); the workers
unpickle the plugin and import this module themselves.

* On the executor's own LocalCluster (``--gpus`` / ``--devices`` without ``--cuda-cluster``)
  the workers are named 0, 1, ...; worker ``k`` takes ``devices[k mod G]`` and narrows its
  ``CUDA_VISIBLE_DEVICES`` to it, as the local pool's workers do.
* On dask-cuda's ``LocalCUDACluster`` (``--cuda-cluster``) each worker was started with its
  own device first in ``CUDA_VISIBLE_DEVICES`` (dask-cuda rotates the list per worker); the
  plugin records that device and changes nothing.
"""

from __future__ import annotations

import os

from distributed import WorkerPlugin

from .devices import CUDA_ENV, assign, require_dask_cuda, use_device

__all__ = ["DevicePlugin", "register_devices", "local_cuda_cluster"]


class DevicePlugin(WorkerPlugin):
    """Give each worker its GPU when it starts (``devices`` None: keep the one its launcher set first)."""

    name = "attnflow-devices"

    def __init__(self, devices: tuple[str, ...] | None):
        self.devices = tuple(devices) if devices else None

    def setup(self, worker) -> None:
        if self.devices:
            try:
                slot = int(worker.name)
            except (TypeError, ValueError):
                raise RuntimeError(f"worker {worker.name!r}: GPUs are assigned by worker number on the "
                                   "executor's own LocalCluster only") from None
            use_device(assign(slot, self.devices), slot=slot, narrow=True)
            return
        env = os.environ.get(CUDA_ENV, "")
        first = env.split(",")[0].strip()
        if not first:
            raise RuntimeError(f"worker {worker.name!r} has no {CUDA_ENV}: not started by dask-cuda")
        slot = int(worker.name) if str(worker.name).isdigit() else 0
        use_device(first, slot=slot, narrow=False)


def register_devices(client, devices: tuple[str, ...] | None) -> None:
    """Run :class:`DevicePlugin` on every worker of ``client`` (present and future)."""
    plugin = DevicePlugin(devices)
    if hasattr(client, "register_plugin"):  # distributed >= 2023.9.2
        client.register_plugin(plugin)
    else:  # pragma: no cover - older distributed
        client.register_worker_plugin(plugin)


def local_cuda_cluster(devices: tuple[str, ...]):
    """dask-cuda's ``LocalCUDACluster``: one single-threaded worker per device of ``devices``."""
    return require_dask_cuda().LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(devices), threads_per_worker=1, dashboard_address=None)
