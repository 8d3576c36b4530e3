"""Benchmarks: timing studies that write the ratios they measure, all from one run.

Each is a module run as ``python -m studies.benchmarks.<name> [--quick] [--out FILE]``
that writes JSON to ``benchmark_results/`` and prints a table, e.g.

* :mod:`studies.benchmarks.bench_flow` -- the attention flow: one SA
  drift against torch's ``scaled_dot_product_attention``, dense NumPy and the
  machine's float64 GEMM rate; peak extra memory at n = 65536; ensemble
  throughput of Euler + renormalise steps against the authors' batched torch
  step.

Benchmarks are not timed tests: tests run at most their ``--quick`` size, to
check that they work.
"""

__all__: list[str] = []
