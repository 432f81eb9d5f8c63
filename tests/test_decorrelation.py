"""Decorrelation rule: O(B d^2) update vs the explicit O(d^3) formula, and its effect."""

from __future__ import annotations

import numpy as np
import pytest

from noisysim.decorrelation import Decorrelator, decorrelation_loss, fold
from noisysim.errors import NoisysimError

try:
    from naive_optim import correlation_loss_naive, decorrelation_step_naive
except ImportError:  # tests/ imported as a package
    from tests.naive_optim import correlation_loss_naive, decorrelation_step_naive


def random_case(B, d, seed=0):
    rng = np.random.default_rng(seed)
    R = np.eye(d) + 0.3 * rng.standard_normal((d, d))
    x = rng.standard_normal((B, d)) @ rng.standard_normal((d, d)) + 0.5  # correlated, non-zero mean
    return R, x @ R.T


@pytest.mark.parametrize("kappa", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("B, d", [(7, 6), (50, 12), (3, 9)])
def test_fast_update_equals_naive_formula(kappa, B, d):
    R, x_star = random_case(B, d, seed=B + d)
    want = decorrelation_step_naive(R, x_star, lr=0.01, kappa=kappa)
    got = R.copy()
    norm = Decorrelator(0.01, kappa).update(got, x_star)
    err = np.linalg.norm(got - want) / np.linalg.norm(want - R)  # relative to the change
    assert err < 1e-12
    assert norm == pytest.approx(np.linalg.norm(want - R), rel=1e-12)


def test_float32_stays_float32_and_close_to_float64():
    R, x_star = random_case(40, 10)
    want = decorrelation_step_naive(R, x_star, lr=0.01, kappa=0.3)
    R32 = R.astype(np.float32)
    Decorrelator(0.01, 0.3).update(R32, x_star)  # float64 inputs are cast to R's dtype
    assert R32.dtype == np.float32
    np.testing.assert_allclose(R32, want, rtol=1e-5, atol=1e-5)


def test_lr_zero_leaves_R_alone_and_update_is_in_place():
    R, x_star = random_case(10, 5)
    frozen = R.copy()
    assert Decorrelator(0.0).update(R, x_star) == 0.0
    np.testing.assert_array_equal(R, frozen)
    same = R
    Decorrelator(0.1).update(R, x_star)
    assert same is R and not np.array_equal(R, frozen)


def equicorrelated(d, rho):
    cov = np.full((d, d), rho)
    np.fill_diagonal(cov, 1.0)
    return np.linalg.cholesky(cov)


def mean_abs_offdiag_corr(x):
    c = np.corrcoef(x, rowvar=False)
    return float(np.abs(c[~np.eye(c.shape[0], dtype=bool)]).mean())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_repeated_updates_decorrelate_equicorrelated_inputs(dtype):
    d, rho = 20, 0.5
    L = equicorrelated(d, rho)
    rng = np.random.default_rng(2024)
    held_out = rng.standard_normal((20000, d)) @ L.T
    R = np.eye(d, dtype=dtype)
    assert mean_abs_offdiag_corr(held_out @ R.T) > 0.3
    dec = Decorrelator(lr=0.05)
    for _ in range(200):
        x = (rng.standard_normal((256, d)) @ L.T).astype(dtype)
        dec.update(R, x @ R.T)  # the reference pass's x* = x R^T, with the current R
    assert R.dtype == dtype
    x_star = held_out @ R.T.astype(np.float64)
    assert mean_abs_offdiag_corr(x_star) < 0.05
    assert decorrelation_loss(x_star) < 0.05**2
    assert decorrelation_loss(held_out) > 0.2


def test_kappa_drives_unit_variance_and_kappa_zero_does_not():
    d = 10
    L = 2.0 * equicorrelated(d, 0.5)  # variances 4, correlation 0.5
    rng = np.random.default_rng(7)
    held_out = rng.standard_normal((20000, d)) @ L.T
    variances = {}
    for kappa in (0.0, 0.5):
        R = np.eye(d)
        dec = Decorrelator(lr=0.01, kappa=kappa)
        for _ in range(300):
            x = rng.standard_normal((256, d)) @ L.T
            dec.update(R, x @ R.T)
        x_star = held_out @ R.T
        assert mean_abs_offdiag_corr(x_star) < 0.05
        variances[kappa] = x_star.var(axis=0)
    assert np.all(np.abs(variances[0.5] - 1.0) < 0.1)
    assert np.all(np.abs(variances[0.0] - 1.0) > 0.2)  # pure decorrelation leaves the scale


def test_diverging_step_raises_and_leaves_R():
    R = np.eye(3)
    x = np.full((4, 3), 1e200)
    with pytest.raises(NoisysimError, match="decorrelation step is not finite"):
        Decorrelator(1.0).update(R, x)
    np.testing.assert_array_equal(R, np.eye(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_that_would_overflow_R_raises_and_leaves_R(dtype):
    # A finite step whose result R - Delta R is not: R[0, 0] near the dtype's maximum and a
    # kappa step of the same sign pushing it past (Delta R = -lr kappa R for x* = 0).
    big = np.finfo(dtype).max / 2
    R = np.eye(3, dtype=dtype)
    R[0, 0] = big
    x = np.zeros((4, 3), dtype=dtype)
    before = R.copy()
    with pytest.raises(NoisysimError, match="decorrelation step is not finite"):
        Decorrelator(1.5, kappa=1.0).update(R, x)
    np.testing.assert_array_equal(R, before)


@pytest.mark.parametrize("args, match", [
    (dict(lr=-0.1), r"decorrelation lr must be in \[0, inf\], got -0.1"),
    (dict(lr=1e-3, kappa=1.5), r"kappa must be in \[0, 1\], got 1.5"),
    (dict(lr=1e-3, kappa=-0.5), r"kappa must be in \[0, 1\], got -0.5"),
    (dict(lr=float("inf")), r"decorrelation lr must be finite, got inf"),
    (dict(lr="fast"), r"decorrelation lr must be a number, got 'fast'"),
])
def test_bad_parameters_raise(args, match):
    with pytest.raises(NoisysimError, match=match):
        Decorrelator(**args)


def test_bad_shapes_raise():
    dec = Decorrelator(1e-3)
    with pytest.raises(NoisysimError, match=r"x_star must be a 2-D batch of shape \(B, 4\)"):
        dec.update(np.eye(4), np.zeros((10, 3)))
    with pytest.raises(NoisysimError, match="R must be a square 2-D array"):
        dec.update(np.zeros((4, 3)), np.zeros((10, 3)))
    with pytest.raises(NoisysimError, match="at least 2 samples"):
        decorrelation_loss(np.zeros((1, 3)))
    with pytest.raises(NoisysimError, match=r"fold needs W of shape \(N_out, 4\)"):
        fold(np.zeros((2, 3)), np.eye(4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decorrelation_loss_matches_naive(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 6)) @ rng.standard_normal((6, 6)) + 3.0
    x[:, 2] = 5.0  # a constant column counts as uncorrelated
    got = decorrelation_loss(x.astype(dtype))
    assert isinstance(got, float)
    assert got == pytest.approx(correlation_loss_naive(x), rel=1e-5 if dtype == np.float32 else 1e-12)
    assert decorrelation_loss(x[:, :1]) == 0.0
    y = rng.standard_normal((5, 1))
    assert decorrelation_loss(np.hstack([y, -3 * y + 1, 2 * y])) == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_equals_decorrelated_forward(dtype):
    rng = np.random.default_rng(4)
    W = rng.standard_normal((3, 5)).astype(dtype)
    R = (np.eye(5) + 0.2 * rng.standard_normal((5, 5))).astype(dtype)
    x = rng.standard_normal((8, 5)).astype(dtype)
    folded = fold(W, R)
    assert folded.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(x @ folded.T, (x @ R.T) @ W.T, rtol=tol, atol=tol)
    unfolded = fold(W, None)
    np.testing.assert_array_equal(unfolded, W)
    assert unfolded is not W
