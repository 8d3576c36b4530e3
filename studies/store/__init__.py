"""The HDF5 run store: :mod:`~studies.store.writer` (crash-safe SWMR runs),
:mod:`~studies.store.reader` (runs back as arrays or xarray), :mod:`~studies.store.summary`
(the text of ``attnflow info``) and :mod:`~studies.store.flags` (HDF5's open-for-writing flag)."""

from studies.store.reader import Run, list_runs, open_xarray, read_run, repair
from studies.store.summary import summarize
from studies.store.writer import COMPRESSIONS, FORMAT_VERSION, RunWriter

__all__ = ["RunWriter", "Run", "read_run", "list_runs", "open_xarray", "summarize", "repair", "FORMAT_VERSION", "COMPRESSIONS"]
