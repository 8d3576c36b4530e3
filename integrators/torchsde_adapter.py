"""Run an attnflow SDE model through torchsde's solvers.

torchsde wants a module with ``f(t, y)`` and a diffusion on flat states
(batch, state_size). Our models take structured states (e.g. (batch, m, m)
covariances) and return g(x) dW directly, so the adapter declares
``noise_type = "general"`` and implements ``g_prod(t, y, v)``: the (batch,
state_size, noise_size) diffusion matrix is never built (for a covariance SDE
with m = 8 it would hold 64 x 128 numbers per path).

:class:`IncrementsBrownian` feeds torchsde the increments of an
:class:`integrators.BrownianIncrements` path, so ``sdeint`` and
:func:`integrators.solve` can be compared on the *same* Brownian path (the
fixed-step Euler schemes then agree to rounding); without it torchsde draws its
own ``BrownianInterval`` and the two agree in law.

References
----------
Li, Wong, Chen, Duvenaud, "Scalable gradients for stochastic differential equations",
AISTATS 2020 (torchsde); google-research/torchsde, ``sdeint`` and ``BaseBrownian``.
"""

from __future__ import annotations

import numpy as np

from integrators.validation import ParameterError, check_positive

from .brownian import BrownianIncrements

__all__ = ["IncrementsBrownian", "TorchsdeAdapter", "sdeint_model"]


def _torch():
    import torch

    return torch


class TorchsdeAdapter(_torch().nn.Module):
    """A torchsde SDE (Ito, general noise) wrapping an attnflow model.

    Parameters
    ----------
    model : an SDE model with ``drift``, ``diffusion``, ``noise_shape`` and Ito calculus.
    state_shape : shape of one state without the batch axis, e.g. (m, m).
    """

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, model, state_shape: tuple[int, ...]):
        super().__init__()
        if not getattr(model, "is_sde", False):
            raise ParameterError("model", f"{type(model).__name__} has no noise: not an SDE")
        if getattr(model, "calculus", "ito") != "ito":
            convert = getattr(model, "with_calculus", None)
            if convert is None:
                raise ParameterError("model", "torchsde's Euler scheme needs the Ito form of the model")
            model = convert("ito")
        self.model = model
        self.state_shape = tuple(int(s) for s in state_shape)
        self.noise_item_shape = tuple(model.noise_shape((1,) + self.state_shape)[1:])
        self.noise_size = int(np.prod(self.noise_item_shape))

    def _unflat(self, y):
        return y.reshape((y.shape[0],) + self.state_shape)

    def f(self, t, y):
        return self.model.drift(float(t), self._unflat(y)).reshape(y.shape[0], -1)

    def g_prod(self, t, y, v):
        dw = v.reshape((v.shape[0],) + self.noise_item_shape)
        return self.model.diffusion(float(t), self._unflat(y), dw).reshape(y.shape[0], -1)

    def f_and_g_prod(self, t, y, v):
        return self.f(t, y), self.g_prod(t, y, v)


def _brownian_base():
    from torchsde import BaseBrownian

    return BaseBrownian


class IncrementsBrownian(_brownian_base()):
    """torchsde Brownian motion whose increments over grid cells are those of a BrownianIncrements path.

    Only queries ``(t_a, t_b)`` that cover whole cells of the grid t0 + k dt are
    answered (fixed-step solvers); the increment is the sum of the cells' increments.
    """

    __slots__ = ("_device", "_dtype", "_shape", "path", "t0")

    def __init__(self, path: BrownianIncrements, t0: float, dtype, device):
        self.path = path
        self.t0 = float(t0)
        b = path.shape[0]
        self._shape = (b, int(np.prod(path.shape[1:])))
        self._dtype = dtype
        self._device = device

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        torch = _torch()
        if tb is None or return_U or return_A:
            raise ValueError("IncrementsBrownian answers increments W(tb) - W(ta) only")
        h = self.path.step
        ka = (float(ta) - self.t0) / h
        kb = (float(tb) - self.t0) / h
        ia, ib = round(ka), round(kb)
        if abs(ka - ia) > 1e-7 * max(1.0, ka) or abs(kb - ib) > 1e-7 * max(1.0, kb) or ib <= ia:
            raise ValueError(f"[{ta}, {tb}] is not a union of cells of the grid of step {h}")
        dw = self.path(ia)
        for k in range(ia + 1, ib):
            dw = dw + self.path(k)
        return torch.as_tensor(dw.reshape(self._shape), dtype=self._dtype, device=self._device)

    def __repr__(self) -> str:
        return f"IncrementsBrownian({self.path!r}, t0={self.t0})"

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return "none"


def sdeint_model(
    model,
    x0,
    ts,
    *,
    dt: float,
    method: str = "euler",
    seed: int | None = None,
    brownian: BrownianIncrements | None = None,
    dtype: str = "float64",
    device: str = "cpu",
) -> np.ndarray:
    """Integrate ``model`` from ``x0`` with ``torchsde.sdeint``; returns (len(ts), batch, ...) numpy.

    Parameters
    ----------
    model : an attnflow SDE model (Ito).
    x0 : initial state (validated by ``model.check_state``).
    ts : output times (first = start time).
    dt : fixed step.
    method : a torchsde method valid for general Ito noise ("euler").
    seed : seed of torchsde's own BrownianInterval (used when ``brownian`` is None).
    brownian : integrate on the increments of this path instead (its step must equal dt).
    """
    torch = _torch()
    import torchsde

    check_positive("dt", dt)
    tdtype = {"float64": torch.float64, "float32": torch.float32}.get(dtype)
    if tdtype is None:
        raise ParameterError("dtype", f"unknown dtype {dtype!r}; choose float64 or float32")
    x = model.check_state(x0)
    sde = TorchsdeAdapter(model, x.shape[1:])
    y0 = torch.as_tensor(x.reshape(x.shape[0], -1), dtype=tdtype, device=device)
    ts_t = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=tdtype, device=device)
    if brownian is not None:
        if abs(brownian.step - dt) > 1e-12 * dt:
            raise ParameterError("dt", f"dt={dt} differs from the Brownian path's step {brownian.step}")
        bm = IncrementsBrownian(brownian, float(ts_t[0]), tdtype, torch.device(device))
    else:
        if seed is None:
            raise ParameterError("seed", "give a seed (or a BrownianIncrements path)")
        bm = torchsde.BrownianInterval(
            t0=float(ts_t[0]), t1=float(ts_t[-1]), size=(x.shape[0], sde.noise_size), dtype=tdtype,
            device=device, entropy=int(seed), levy_area_approximation="none",
        )  # fmt: skip
    with torch.no_grad():
        ys = torchsde.sdeint(sde, y0, ts_t, bm=bm, method=method, dt=dt)
    # torchsde has no exit handling: paths that blow up come back non-finite; callers count them.
    out = ys.detach().cpu().numpy()
    return out.reshape((out.shape[0],) + x.shape)
