"""The counter-based Brownian increments: Philox known answers, the normal law, independence,
reproducibility under any thread count, and exact nesting of coarse increments."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import stats

from integrators import BrownianIncrements
from integrators._philox import philox4x32

U = np.uint64

# Random123's kat_vectors for philox4x32-10: counter, key -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    out = philox4x32(*(U(c) for c in ctr), *(U(k) for k in key))
    assert tuple(int(x) for x in out) == expected


def test_increments_are_standard_normal():
    """KS against N(0, dt) and the first four moments within 4 standard errors, 2e6 draws."""
    dt = 0.01
    z = BrownianIncrements((2000, 1000), dt, seed=2026)(3).ravel() / np.sqrt(dt)
    n = z.size
    assert stats.kstest(z, "norm").pvalue > 0.01
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 4 * np.sqrt(6 / n)
    assert abs(np.mean(z**4) - 3) < 4 * np.sqrt(96 / n)
    # tails: P(|Z| > 4) = 6.3e-5, Poisson count within 4 sigma
    expect = n * 2 * stats.norm.sf(4)
    assert abs(np.sum(np.abs(z) > 4) - expect) < 4 * np.sqrt(expect)


def test_pairs_rows_and_steps_are_uncorrelated():
    """Neighbouring normals (one Philox block), neighbouring rows, successive increments and
    different seeds: sample correlations within 4 standard errors of zero."""
    b = BrownianIncrements((4000, 64), 1.0, seed=7)
    z0, z1 = b(0), b(1)
    other = BrownianIncrements((4000, 64), 1.0, seed=8)(0)
    n = z0.size
    tol = 4 / np.sqrt(n / 2)
    for x, y in [(z0[:, 0::2], z0[:, 1::2]), (z0[:-1], z0[1:]), (z0, z1), (z0, other)]:
        assert abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < tol
    # squares of neighbours: independent, not merely uncorrelated
    assert abs(np.corrcoef(z0[:, 0::2].ravel() ** 2, z0[:, 1::2].ravel() ** 2)[0, 1]) < tol


def test_same_numbers_for_any_thread_count_and_any_layout():
    b = BrownianIncrements((257, 3, 5), 0.1, seed=11)  # odd row length: 15 normals per row
    ref = b(4)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert np.array_equal(b(4), ref)
    finally:
        numba.set_num_threads(old)
    # a row does not depend on how many rows are drawn
    assert np.array_equal(BrownianIncrements((10, 3, 5), 0.1, seed=11)(4), ref[:10])
    out = np.empty((257, 15))
    assert np.array_equal(b.fill(4, out).reshape(b.shape), ref)
    assert not np.array_equal(b(5), ref)
    assert not np.array_equal(BrownianIncrements((257, 3, 5), 0.1, seed=12)(4), ref)


def test_coarse_increment_is_the_sum_of_fine_ones():
    b = BrownianIncrements((50, 4, 4), 1e-3, seed=3)
    c = b.coarsen(5)
    assert c.step == pytest.approx(5e-3)
    total = b(10)
    for k in range(11, 15):
        total = total + b(k)
    assert np.array_equal(c(2), total)
    assert np.allclose(c.coarsen(2)(1), c(2) + c(3), rtol=0, atol=1e-15)  # same sum, other grouping


def test_float32_is_the_rounded_float64_path():
    b64 = BrownianIncrements((20, 6), 0.5, seed=1)
    b32 = BrownianIncrements((20, 6), 0.5, seed=1, dtype="float32")
    assert b32(2).dtype == np.float32
    assert np.array_equal(b32(2), b64(2).astype(np.float32))


def test_bad_fill_buffer_is_rejected():
    with pytest.raises(ValueError, match="C-contiguous float64"):
        BrownianIncrements((4, 3), 0.1, seed=0).fill(0, np.empty((3, 4)))


def test_fine_histogram_and_ziggurat_tail():
    """4e6 draws: chi-square over 161 bins of width 0.05 plus two tails (p > 0.001), and the
    counts beyond the ziggurat's tail start r = 3.654 and beyond 4.5 within 4 sigma of Poisson."""
    z = np.concatenate([BrownianIncrements((5000, 200), 1.0, seed=s)(0).ravel() for s in (31, 32, 33, 34)])
    n = z.size
    edges = np.concatenate([[-np.inf], np.linspace(-4.0, 4.0, 161), [np.inf]])
    observed = np.histogram(z, edges)[0]
    expected = n * np.diff(stats.norm.cdf(edges))
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert stats.chi2.sf(chi2, len(observed) - 1) > 1e-3
    for c in (3.6541528853610088, 4.5):
        expect = n * 2 * stats.norm.sf(c)
        assert abs(np.sum(np.abs(z) > c) - expect) < 4 * np.sqrt(expect)
