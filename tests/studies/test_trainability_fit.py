"""The trainability fit: the basis follows the number of grid points, the interval over seeds is honest."""

import numpy as np
import pytest

from studies.papers.trainability import fit_r2, seed_interval


def test_fit_basis_follows_the_number_of_points():
    rng = np.random.default_rng(1)
    a, g = rng.normal(size=12), rng.normal(size=12)
    lin = 0.5 + 2 * a - g
    assert fit_r2(a[:6], g[:6], lin[:6])[2] == "linear"
    r2, loo, basis = fit_r2(a[:6], g[:6], lin[:6])
    assert r2 == pytest.approx(1.0) and loo == pytest.approx(1.0)  # an exact linear law is fitted exactly
    assert fit_r2(a, g, lin + a * g)[2] == "quadratic"
    assert fit_r2(a, g, lin + a * g)[0] == pytest.approx(1.0)
    assert np.isnan(fit_r2(a[:5], g[:5], lin[:5])[0])


def test_seed_interval_brackets_and_shrinks_with_noise():
    rng = np.random.default_rng(2)
    a, g = rng.normal(size=30), rng.normal(size=30)
    clean = 1 + a - 2 * g + a * g
    lo0, hi0, per0 = seed_interval(a, g, np.repeat(clean[:, None], 3, axis=1))
    assert lo0 == pytest.approx(1.0) and hi0 == pytest.approx(1.0) and np.allclose(per0, 1.0)  # identical seeds
    noisy = clean[:, None] + rng.normal(scale=1.5, size=(30, 4))
    lo, hi, per = seed_interval(a, g, noisy)
    mean_r2 = fit_r2(a, g, noisy.mean(axis=1))[0]
    assert lo < hi < 1 and lo <= mean_r2 + 0.05  # the seed noise shows as a spread below 1
    assert per.shape == (4,) and np.all(per < mean_r2 + 0.2)
    lo1, hi1, per1 = seed_interval(a, g, noisy[:, :1])
    assert np.isnan(lo1) and np.isnan(hi1) and per1.shape == (1,)
