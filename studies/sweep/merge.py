"""Gather the shards of a sweep into one study file with named dimensions.

Each measurement becomes a dataset over (grid dimensions..., ``seed``, its own
axes...), with HDF5 dimension scales (the netCDF-4 data model), so::

    xarray.open_dataset("study.h5", engine="h5netcdf")

opens it as labelled arrays: grid parameters are coordinates (a zipped group
is one dimension with one coordinate per parameter), ``seed`` is the replicate
index. Per task: ``task_id``, ``task_seed``, ``task_status`` (0 missing,
1 complete, 2 failed), ``task_error``, ``task_attempts``, ``task_compute_s``, and
``task_device`` when some task ran on a GPU (``"cuda:0 (device 3)"``; "" on the CPU).
Entries of missing or failed tasks are NaN (integer and bool measurements
are then stored as float64); interrupted tasks count as missing. Root
attributes follow MODELS.md section 4; ``shards_code_version`` is the code
version (package version and git commit) that wrote the shards. Shards from
different code versions are refused unless ``allow_mixed``, which records the
mix (``mixed_code_versions``: version -> number of shards).
The file is written to a temporary name and renamed. The task's module is
never imported (its declared axes come from the spec).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from studies.sweep.plan import plan_tasks
from studies.provenance import provenance
from studies.sweep.runner import SweepError, default_out, spec_summary
from studies.sweep.shards import Store, _fsync_dir, _tmp_name, read_shard
from studies.sweep.spec import SweepSpec

__all__ = ["merge_sweep", "MergeResult", "load_study", "STATUS_CODES"]

STATUS_CODES = {"missing": 0, "complete": 1, "failed": 2}
_STR = h5py.string_dtype()


@dataclass
class MergeResult:
    path: Path
    total: int
    complete: int
    failed: int
    missing: int

    @property
    def status(self) -> str:
        if self.complete == self.total:
            return "complete"
        return f"incomplete: {self.complete} complete, {self.failed} failed, {self.missing} missing of {self.total}"


def _coord_array(values) -> tuple[np.ndarray, dict]:
    vals = list(values)
    if all(isinstance(v, str) for v in vals):
        return np.array(vals, dtype=object), {}
    if all(isinstance(v, bool) for v in vals):
        return np.array(vals, dtype=np.int8), {"dtype": "bool"}
    return np.asarray(vals), {}


def _scale(f: h5py.File, name: str, data: np.ndarray, attrs: dict | None = None) -> h5py.Dataset:
    ds = f.create_dataset(name, data=data, dtype=_STR if data.dtype == object else data.dtype)
    ds.make_scale(name)
    for k, v in (attrs or {}).items():
        ds.attrs[k] = v
    return ds


def _attach(ds: h5py.Dataset, dims: list[str], scales: dict[str, h5py.Dataset]) -> None:
    for i, d in enumerate(dims):
        ds.dims[i].attach_scale(scales[d])


def _code_version(attrs: dict) -> str:
    return f"{attrs.get('package_version', 'unknown')} {attrs.get('git_commit', 'unknown')}"


def merge_sweep(spec: SweepSpec, out: str | Path | None = None, output: str | Path | None = None, *,
                allow_mixed: bool = False) -> MergeResult:
    """Merge the shards under ``out`` into ``output`` (default ``OUT/<name>.h5``).

    Raises :class:`SweepError` if the complete shards were written by different
    code versions (package version, git commit) and ``allow_mixed`` is not set.
    """
    from studies.sweep.tasks import get_task, is_code_task

    store = Store(out if out is not None else default_out(spec))
    if not (store.root / "shards").is_dir():
        raise FileNotFoundError(f"no sweep store at {store.root} (run the sweep first)")
    tasks = plan_tasks(spec)
    grid_shape = spec.shape + (spec.seeds,)
    status = np.zeros(grid_shape, dtype=np.int8)
    ids = np.empty(grid_shape, dtype=object)
    seeds = np.zeros(grid_shape, dtype=np.int64)
    errors = np.full(grid_shape, "", dtype=object)
    attempts = np.zeros(grid_shape, dtype=np.int64)
    compute = np.full(grid_shape, np.nan)
    devices = np.full(grid_shape, "", dtype=object)  # stored only when some task ran on a GPU
    data: dict[tuple, dict[str, np.ndarray]] = {}
    versions: dict[str, int] = {}
    have = store.shard_ids()
    for t in tasks:
        pos = t.point + (t.replicate,)
        ids[pos], seeds[pos] = t.task_id, t.seed
        shard = read_shard(store.shard_path(t.task_id)) if t.task_id in have else None
        if shard is None or shard.attrs.get("task_id") != t.task_id or int(shard.attrs.get("seed", -1)) != t.seed:
            errors[pos] = "missing"
            continue
        if shard.status == "interrupted":
            errors[pos] = "interrupted"
            continue
        status[pos] = STATUS_CODES["complete"] if shard.status == "complete" else STATUS_CODES["failed"]
        errors[pos] = str(shard.attrs.get("error", ""))
        attempts[pos] = int(shard.attrs.get("attempts", 0))
        compute[pos] = float(shard.attrs.get("compute_s", np.nan))
        devices[pos] = str(shard.attrs.get("device", ""))
        if shard.status == "complete":
            data[pos] = shard.measurements or {}
            v = _code_version(shard.attrs)
            versions[v] = versions.get(v, 0) + 1
    if len(versions) > 1 and not allow_mixed:
        listed = ", ".join(f"{v} ({n} shard(s))" for v, n in sorted(versions.items(), key=lambda kv: -kv[1]))
        raise SweepError(f"the shards of {store.root} were written by {len(versions)} code versions: {listed}; "
                         "re-run the sweep with one version, or pass --allow-mixed (allow_mixed=True) to merge them anyway")

    declared = dict(spec.dims) if spec.dims or is_code_task(spec.task) else get_task(spec.task).dims
    meas_dims, dim_size, coords = _layout(data, declared)
    reserved = {a.name for a in spec.axes} | {p for a in spec.axes for p in a.coords} | {"seed"}
    reserved |= {d for d in dim_size if d not in meas_dims or d in coords}
    counts = MergeResult(Path(output) if output else store.root / f"{spec.name}.h5", len(tasks),
                         int((status == 1).sum()), int((status == 2).sum()), int((status == 0).sum()))
    path = counts.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with h5py.File(tmp, "w") as f:
            summary = spec_summary(spec)
            attrs = {
                "title": f"attnflow sweep {spec.name}",
                "model": str(spec.params.get("model", spec.task)),
                "task": spec.task,
                "parameters": json.dumps(summary),
                "fixed_parameters": json.dumps(spec.params),
                "root_seed": spec.root_seed,
                "seeds": spec.seeds,
                "description": spec.description,
                "completion_status": counts.status,
                "n_tasks": counts.total,
                "n_complete": counts.complete,
                "n_failed": counts.failed,
                "n_missing": counts.missing,
                "spec_toml": spec.text or "",
                **provenance(),
                "shards_code_version": next(iter(versions)) if len(versions) == 1 else ("mixed" if versions else ""),
            }
            if len(versions) > 1:
                attrs["mixed_code_versions"] = json.dumps(versions)
            for k, v in attrs.items():
                f.attrs[k] = v
            scales: dict[str, h5py.Dataset] = {}
            zip_coords: list[str] = []
            for a in spec.axes:
                if a.zipped:
                    scales[a.name] = _scale(f, a.name, np.arange(a.size), {"long_name": f"index of zipped parameters {list(a.coords)}"})
                    for p, vals in a.coords.items():
                        arr, extra = _coord_array(vals)
                        ds = f.create_dataset(p, data=arr, dtype=_STR if arr.dtype == object else arr.dtype)
                        for k, v in extra.items():
                            ds.attrs[k] = v
                        _attach(ds, [a.name], scales)
                        zip_coords.append(p)
                else:
                    arr, extra = _coord_array(a.coords[a.name])
                    scales[a.name] = _scale(f, a.name, arr, extra)
            scales["seed"] = _scale(f, "seed", np.arange(spec.seeds), {"long_name": "replicate index (see task_seed)"})
            grid_dims = [a.name for a in spec.axes] + ["seed"]
            for d, size in dim_size.items():
                if d in coords:
                    scales[d] = _scale(f, d, coords[d])
                else:
                    scales[d] = _scale(f, d, np.arange(size), {"long_name": f"axis {d}"})
            for name, dims in meas_dims.items():
                if name in coords:
                    continue
                target = name if name not in reserved else f"{name}_measured"
                arr = _fill(data, name, grid_shape, [dim_size[d] for d in dims])
                big = arr.nbytes > 1 << 20
                ds = f.create_dataset(target, data=arr, chunks=True if big else None,
                                      compression="gzip" if big else None, shuffle=big)
                _attach(ds, grid_dims + dims, scales)
                if zip_coords:
                    ds.attrs["coordinates"] = " ".join(zip_coords)
            for name, arr, desc in (
                ("task_status", status, "0 missing, 1 complete, 2 failed"),
                ("task_id", ids, "task id (hash of parameters and replicate)"),
                ("task_seed", seeds, "seed passed to the task"),
                ("task_error", errors, "error of a failed task"),
                ("task_attempts", attempts, "attempts made"),
                ("task_compute_s", compute, "seconds spent in the task function"),
            ) + ((("task_device", devices, "GPU the task ran on (torch name, physical device)"),)
                 if any(devices.ravel()) else ()):
                ds = f.create_dataset(name, data=arr, dtype=_STR if arr.dtype == object else arr.dtype)
                ds.attrs["long_name"] = desc
                if name == "task_status":
                    ds.attrs["flag_values"] = np.array([0, 1, 2], dtype=np.int8)
                    ds.attrs["flag_meanings"] = "missing complete failed"
                _attach(ds, grid_dims, scales)
                if zip_coords:
                    ds.attrs["coordinates"] = " ".join(zip_coords)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return counts


def _layout(data: dict[tuple, dict[str, np.ndarray]], declared: dict[str, tuple[str, ...]]):
    """Dimension names and sizes of every measurement, and constant coordinates."""
    ndims: dict[str, int] = {}
    for values in data.values():
        for name, arr in values.items():
            if ndims.setdefault(name, arr.ndim) != arr.ndim:
                raise SweepError(f"measurement {name!r} has {ndims[name]} axes in one task and {arr.ndim} in another")
    meas_dims = {}
    for name, nd in ndims.items():
        dims = tuple(declared.get(name, ()))
        meas_dims[name] = list(dims) if len(dims) == nd else [f"{name}_dim{k}" for k in range(nd)]
    # A 1-D measurement named like its own axis and equal in every task is that axis' coordinate.
    coords: dict[str, np.ndarray] = {}
    for name, dims in meas_dims.items():
        if dims != [name]:
            continue
        vals = [v[name] for v in data.values() if name in v]
        if vals and all(np.array_equal(vals[0], v) for v in vals[1:]) and len(vals) == len(data):
            coords[name] = vals[0]
        else:
            for other in meas_dims.values():
                other[:] = [f"{d}_index" if d == name else d for d in other]
    dim_size: dict[str, int] = {}
    for values in data.values():
        per_task: dict[str, int] = {}
        for name, arr in values.items():
            for d, s in zip(meas_dims[name], arr.shape):
                if per_task.setdefault(d, s) != s:
                    raise SweepError(f"axis {d!r} has sizes {per_task[d]} and {s} within one task")
                dim_size[d] = max(dim_size.get(d, 0), s)
    for d, c in coords.items():
        dim_size[d] = len(c)
    return meas_dims, dim_size, coords


def _fill(data, name: str, grid_shape: tuple, extra: list[int]) -> np.ndarray:
    arrays = {pos: v[name] for pos, v in data.items() if name in v}
    full = len(arrays) == int(np.prod(grid_shape)) and all(list(a.shape) == extra for a in arrays.values())
    dtype = np.result_type(*arrays.values()) if arrays else np.float64
    if not full and dtype.kind != "f":
        dtype = np.dtype(np.float64)  # NaN marks missing entries
    out = np.zeros(grid_shape + tuple(extra), dtype=dtype) if full else np.full(grid_shape + tuple(extra), np.nan, dtype=dtype)
    for pos, a in arrays.items():
        out[pos + tuple(slice(0, s) for s in a.shape)] = a
    return out


def load_study(path: str | Path) -> dict:
    """Read a merged study file without xarray: ``{"attrs", "dims", "coords", "vars"}``.

    ``vars[name] = (dims, array)``; ``coords[dim]`` the coordinate values.
    """
    out = {"attrs": {}, "coords": {}, "vars": {}}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        for name, ds in f.items():
            arr = ds[()]
            if ds.dtype.kind == "O":
                arr = np.array([x.decode() if isinstance(x, bytes) else x for x in np.ravel(arr)], dtype=object).reshape(arr.shape)
            if ds.is_scale:
                out["coords"][name] = arr
            else:
                dims = tuple(ds.dims[i][0].name.lstrip("/") if len(ds.dims[i]) else f"dim{i}" for i in range(ds.ndim))
                out["vars"][name] = (dims, arr)
    return out
