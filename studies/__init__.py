"""What we learn: simulations, sweeps, the HDF5 store, figures, CLI and benchmarks."""
