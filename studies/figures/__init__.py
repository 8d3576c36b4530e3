"""Figures of stored runs, one module per model family (``flow`` for the attention flow).

Each module used by ``attnflow plot`` exposes ``handles(run) -> bool`` and
``plot_run(run, out, system=0) -> pathlib.Path`` (see :mod:`studies.cli.plot`).
"""
