"""One-step maps for SDEs on symmetric positive semi-definite matrices.

Euler-Maruyama does not keep a covariance V positive semi-definite: near the
boundary of the cone (a small eigenvalue, nearly collinear tokens) an increment
of size sqrt(dt) can push an eigenvalue below zero, after which the Cholesky
factor of the diffusion no longer exists. :func:`psd_euler_maruyama_step` takes
the Euler-Maruyama step and projects it onto the PSD cone in the Frobenius norm
(eigenvalues clipped at zero). The exact solution lies in the cone and the
projection onto a closed convex set is 1-Lipschitz, so the projection never
increases the distance to it: the strong order of Euler-Maruyama (1/2) is kept.
Away from the boundary the step is plain Euler-Maruyama.

The other PSD-preserving discretisation, the exact finite-width chain with
n_eff = 1/dt, lives in :mod:`particles.covariance.chain` (it is a Markov chain in
its own right, with its own random draws, not a stepper on Brownian increments).

Steppers never loop, draw random numbers or write files (see :mod:`integrators.steppers`).
"""

from __future__ import annotations

import numpy as np

from .ops import is_torch

__all__ = ["psd_euler_maruyama_step", "psd_project"]


def psd_project(V):
    """Frobenius projection of symmetric (..., m, m) matrices onto the PSD cone.

    Matrices that are already numerically positive definite (their Cholesky
    factorisation succeeds) are returned unchanged; the others get
    U max(Lambda, 0) U^T. Non-finite matrices are returned unchanged (the driver
    flags those paths as exited). numpy or torch.
    """
    if is_torch(V):
        import torch

        _, info = torch.linalg.cholesky_ex(V)
        bad = (info != 0) & torch.isfinite(V).all(dim=-1).all(dim=-1)
        if not bool(bad.any()):
            return V
        out = V.clone()
        w, U = torch.linalg.eigh(V[bad])
        P = (U * w.clamp(min=0)[..., None, :]) @ U.transpose(-1, -2)
        out[bad] = 0.5 * (P + P.transpose(-1, -2))
        return out
    try:
        np.linalg.cholesky(V)
        return V
    except np.linalg.LinAlgError:
        pass
    # non-finite matrices are left alone: the driver flags and freezes those paths
    ok = np.all(np.isfinite(V), axis=(-1, -2))
    out = np.array(V, copy=True)
    w, U = np.linalg.eigh(np.where(ok[..., None, None], V, 0.0))
    neg = np.any(w < 0, axis=-1) & ok
    P = (U[neg] * np.clip(w[neg], 0, None)[..., None, :]) @ np.swapaxes(U[neg], -1, -2)
    out[neg] = 0.5 * (P + np.swapaxes(P, -1, -2))  # exactly symmetric, as the states it replaces
    return out


def psd_euler_maruyama_step(f, t, x, dt, space, g=None, dw=None):
    """Ito Euler-Maruyama on symmetric matrices, projected onto the PSD cone.

    x_new = Pi_PSD( sym(x + f(t, x) dt + g(t, x) dW) ); ``space`` must be
    :class:`particles.geometry.SymmetricMatrices` (state shape (batch, m, m)).
    """
    if getattr(space, "name", None) != "symmetric":
        from particles.validation import ParameterError

        raise ParameterError("method", "psd-euler-maruyama integrates SDEs on symmetric matrices only")
    y = space.retract(x + dt * f(t, x) + g(t, x, dw))
    return psd_project(y), None
