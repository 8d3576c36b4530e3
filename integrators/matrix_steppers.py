"""One-step maps for SDEs on symmetric positive semi-definite matrices.

Euler-Maruyama does not keep a covariance V positive semi-definite: near the
boundary of the cone (a small eigenvalue, nearly collinear tokens) an increment
of size sqrt(dt) can push an eigenvalue below zero, after which the Cholesky
factor of the diffusion no longer exists. :func:`psd_euler_maruyama_step` takes
the Euler-Maruyama step and projects it onto the PSD cone in the Frobenius norm
(eigenvalues clipped at zero). The exact solution lies in the cone and the
projection onto a closed convex set is 1-Lipschitz, so the projection never
increases the distance to it: the strong order of Euler-Maruyama (1/2) is kept
(eigenvalues at round-off level are zeroed as well, a change of order eps).
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
    """Projection of symmetric (..., m, m) matrices onto the PSD cone, round-off zeros included.

    Matrices that are numerically positive definite (their Cholesky factorisation
    succeeds) are returned unchanged; the others get U Lambda_+ U^T, where Lambda_+
    keeps the eigenvalues above 8 m eps max|lambda| and sets the rest to zero. That is
    the Frobenius projection onto the cone up to round-off; zeroing the round-off
    eigenvalues as well keeps them from accumulating step after step (a rank-one state
    stays rank one to ~eps). The result is exactly symmetric. Non-finite matrices are
    returned unchanged (the driver flags those paths as exited). numpy or torch.
    """
    if is_torch(V):
        import torch

        _, info = torch.linalg.cholesky_ex(V)
        bad = (info != 0) & torch.isfinite(V).all(dim=-1).all(dim=-1)
        if not bool(bad.any()):
            return V
        out = V.clone()
        w, U = torch.linalg.eigh(V[bad])
        floor = 8 * w.shape[-1] * torch.finfo(w.dtype).eps * w.abs().amax(dim=-1, keepdim=True)
        P = (U * torch.where(w > floor, w, 0.0)[..., None, :]) @ U.transpose(-1, -2)
        out[bad] = 0.5 * (P + P.transpose(-1, -2))
        return out
    try:
        np.linalg.cholesky(V)
        return V
    except np.linalg.LinAlgError:
        pass
    flat = V.reshape((-1,) + V.shape[-2:])
    out = np.array(flat, copy=True)
    ok = np.all(np.isfinite(flat), axis=(-1, -2))  # non-finite: the driver flags and freezes those paths
    w, U = np.linalg.eigh(np.where(ok[:, None, None], flat, 0.0))
    floor = 8 * w.shape[-1] * np.finfo(w.dtype).eps * np.abs(w).max(axis=-1, keepdims=True)
    bad = ok & (w[:, 0] <= floor[:, 0])  # only these can fail Cholesky (a rare handful)
    for i in np.flatnonzero(bad):  # Cholesky decides, as on the torch and numba backends
        try:
            np.linalg.cholesky(flat[i])
            bad[i] = False
        except np.linalg.LinAlgError:
            pass
    P = (U[bad] * np.where(w[bad] > floor[bad], w[bad], 0.0)[..., None, :]) @ np.swapaxes(U[bad], -1, -2)
    out[bad] = 0.5 * (P + np.swapaxes(P, -1, -2))
    return out.reshape(V.shape)


def psd_euler_maruyama_step(f, t, x, dt, space, g=None, dw=None):
    """Ito Euler-Maruyama on symmetric matrices, projected onto the PSD cone.

    x_new = Pi_PSD( sym(x + f(t, x) dt + g(t, x) dW) ); ``space`` must be
    :class:`particles.sphere.geometry.SymmetricMatrices` (state shape (batch, m, m)).
    """
    if getattr(space, "name", None) != "symmetric":
        from integrators.validation import ParameterError

        raise ParameterError("method", "psd-euler-maruyama integrates SDEs on symmetric matrices only")
    y = space.retract(x + dt * f(t, x) + g(t, x, dw))
    return psd_project(y), None
