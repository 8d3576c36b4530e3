"""The papers' studies, one module per study next to its sweep spec (``<study>.toml``).

Each module holds the study (``run(out, size, ...)``, ``plot(...)``) and the sweep
tasks it registers (``flow.phase_point``, ``cov.rho_law``, ...):

* :mod:`~studies.papers.phase_diagram` -- GLPR Fig. 3 and 5: P(t, beta) with the equiangular ODE;
* :mod:`~studies.papers.metastability` -- GLPR Fig. 4 and META: plateaus, energy staircase, merge times;
* :mod:`~studies.papers.collapse` -- collapse times against the equiangular prediction;
* :mod:`~studies.papers.high_dim` -- GLPR Thm 6.9: pair histograms in high dimension;
* :mod:`~studies.papers.cov` -- NOCI Fig. 1: finite shaped transformers against the covariance SDE;
* :mod:`~studies.papers.signalprop` and :mod:`~studies.papers.trainability` -- COWSIK: phase
  diagrams of the signal-propagation maps, exponents against finite networks, trainability.

:mod:`~studies.papers.common` is what they share (specs with size overrides, sweep and merge,
command-line options) and :mod:`~studies.papers._flow` the flow tasks' defaults and checked solve.
"""
