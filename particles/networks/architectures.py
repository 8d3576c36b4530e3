"""Finite networks at initialisation, batched over independent draws of the weights (torch).

* :class:`ShapedTransformer` -- the shaped transformer of MODELS.md section 2: residual
  shaped attention A = I + softmax(Y/tau) - (1/m) 1 1^T with tau = tau0 sqrt(n n_k),
  followed by a residual shaped-ReLU MLP (``layers="block"``); or attention only, the
  residual MLP only, or a residual linear layer.
* :class:`StandardTransformer` -- softmax attention with tau = sqrt(n_k), no centring,
  with or without pre-LN, optionally with a ReLU MLP: the rank-collapse baseline.
* :class:`ShapedMLP` -- LNR's shaped-ReLU MLP without residual.

Tokens X in R^{m x n}, V = X X^T / n, lambda^2 + gamma^2 = 1, weights iid N(0, 1) with the
1/sqrt(fan_in) scalings written in the layers (:mod:`particles.networks._layers`). One block
is one step 1/n of SDE time. ``run`` records V over depth; the same networks run as exact
Markov chains on V in :class:`particles.covariance.FiniteWidthChain`.

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759, section 3 (shaped attention, block).
Li, Nica, Roy, "The neural covariance SDE", arXiv:2206.02768, section 2 (shaped ReLU).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from integrators.validation import (
    ParameterError,
    check_choice,
    check_in_range,
    check_positive,
    check_positive_int,
)
from particles.covariance._algebra import psd_factor
from particles.covariance.models import prepare_v0
from integrators.cuda_graph import RepeatedBlock
from particles.shared import NetworkRun, haar_frame, make_generator, torch_dtype

from . import _layers

__all__ = ["SHAPED_LAYERS", "ShapedMLP", "ShapedTransformer", "StandardTransformer"]

SHAPED_LAYERS = ("block", "attention", "mlp", "linear")


def _finite(name, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
        raise ParameterError(name, f"expected a finite number, got {v!r}")
    return float(v)


class _Network:
    """Shared run loop; subclasses list their sub-layers as (kind, parameters)."""

    n: int
    heads: int = 1

    def sublayers(self) -> tuple[tuple[str, dict], ...]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def name(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def params(self) -> dict:
        return {"network": self.name, **asdict(self)}

    def _shaped_relu(self) -> tuple[float, float, float]:
        sp = 1.0 + self.c_plus / math.sqrt(self.n)
        sm = 1.0 + self.c_minus / math.sqrt(self.n)
        if sp * sp + sm * sm == 0:
            raise ParameterError("c_plus", "s_+ = s_- = 0: the shaped ReLU vanishes")
        return sp, sm, 2.0 / (sp * sp + sm * sm)

    def initial_tokens(self, V0, *, batch: int | None = None, seed: int, device: str = "cpu", dtype: str = "float64"):
        """X0 = sqrt(n) L O with L L^T = V0 and O Haar-distributed orthonormal rows: (batch, m, n) torch."""
        V = prepare_v0(V0, batch)
        td = torch_dtype(dtype)
        gen = make_generator(seed, device)
        import torch

        L = psd_factor(torch.as_tensor(V, dtype=td, device=device))
        O = haar_frame(V.shape[0], V.shape[-1], self.n, gen, td, device)
        return math.sqrt(self.n) * (L @ O)

    def run(
        self,
        V0=None,
        depth: int = 1,
        *,
        seed: int,
        batch: int | None = None,
        X0=None,
        device: str = "cpu",
        dtype: str = "float64",
        record_every: int = 1,
    ) -> NetworkRun:
        """Run ``depth`` blocks on ``batch`` independent networks, recording V every ``record_every`` blocks.

        Parameters
        ----------
        V0 : input covariance (m, m) or (batch, m, m); the tokens are X0 = sqrt(n) L O
            (L L^T = V0, O Haar). Give either V0 or X0.
        X0 : input tokens, (m, n) or (batch, m, n).
        seed : seed of the weights (and of O).
        record_every : records at blocks 0, k, 2k, ... and at ``depth``.

        Memory: three (batch, n, n) weight matrices are alive at a time.
        """
        import torch

        check_positive_int("depth", depth)
        check_positive_int("record_every", record_every)
        td = torch_dtype(dtype)
        if (V0 is None) == (X0 is None):
            raise ParameterError("V0", "give exactly one of V0 and X0")
        if X0 is not None:
            X = torch.as_tensor(np.asarray(X0) if not isinstance(X0, torch.Tensor) else X0, dtype=td, device=device)
            X = X[None] if X.ndim == 2 else X
            if X.ndim != 3 or X.shape[-1] != self.n or X.shape[1] < 2:
                raise ParameterError("X0", f"expected (batch, m >= 2, n={self.n}) tokens, got {tuple(X.shape)}")
            gen = make_generator(seed, device)
        else:
            X = self.initial_tokens(V0, batch=batch, seed=seed, device=device, dtype=dtype)
            gen = make_generator(seed + 1, device)
        subs = self.sublayers()
        fns = {"attention": _layers.attention, "mlp": _layers.mlp, "lnr-mlp": _layers.lnr_mlp, "linear": _layers.linear}
        rec_layers, rec_V = [0], [(X @ X.transpose(-1, -2) / self.n).cpu().numpy()]
        wall = time.perf_counter()

        def one_block(X):
            for kind, kw in subs:
                X = fns[kind](X, gen, **kw)
            return X

        # on CUDA the block is captured once in a CUDA graph and replayed (integrators.cuda_graph)
        block = RepeatedBlock(one_block, gen, use_graph=torch.device(device).type == "cuda" and depth > 1)
        with torch.no_grad():
            for layer in range(1, depth + 1):
                X = block(X)
                if layer % record_every == 0 or layer == depth:
                    rec_layers.append(layer)
                    rec_V.append((X @ X.transpose(-1, -2) / self.n).cpu().numpy())
        meta = {**self.params(), "simulator": "plain", "seed": seed, "dtype": dtype, "device": str(device),
                "wall_time_s": time.perf_counter() - wall, "cuda_graph": block.graphed}  # fmt: skip
        return NetworkRun(np.asarray(rec_layers), np.stack(rec_V), self.n, meta)


@dataclass(frozen=True)
class ShapedTransformer(_Network):
    """Shaped transformer at initialisation (MODELS.md section 2).

    Parameters
    ----------
    n : width. n_k : key/query width per head (default n).
    gamma : residual branch weight in (0, 1], lambda = sqrt(1 - gamma^2).
    tau0 : temperature constant, tau = tau0 sqrt(n n_k).
    c_plus, c_minus : shaped-ReLU slopes s_+- = 1 + c_+-/sqrt(n).
    heads : attention heads (value width n/heads each; n must be divisible by heads).
    layers : "block" (attention then MLP), "attention", "mlp" (residual MLP) or "linear"
        (X' = lambda X + gamma X W / sqrt(n)).
    """

    n: int
    gamma: float
    tau0: float = 1.0
    n_k: int | None = None
    c_plus: float = 0.0
    c_minus: float = -1.0
    heads: int = 1
    layers: str = "block"

    def __post_init__(self):
        check_positive_int("n", self.n, minimum=2)
        check_in_range("gamma", self.gamma, 0.0, 1.0, lo_open=True)
        check_positive("tau0", self.tau0)
        if self.n_k is not None:
            check_positive_int("n_k", self.n_k)
        _finite("c_plus", self.c_plus)
        _finite("c_minus", self.c_minus)
        check_positive_int("heads", self.heads)
        if self.n % self.heads:
            raise ParameterError("heads", f"n={self.n} is not divisible by heads={self.heads}")
        check_choice("layers", self.layers, SHAPED_LAYERS)

    @property
    def name(self) -> str:
        return f"shaped-transformer-{self.layers}"

    @property
    def key_width(self) -> int:
        return self.n if self.n_k is None else self.n_k

    def sublayers(self):
        lam = math.sqrt(1.0 - self.gamma**2)
        nk = self.key_width
        att = ("attention", dict(lam=lam, gamma=self.gamma, heads=self.heads, n_k=nk,
                                 temperature=self.tau0 * math.sqrt(self.n * nk), shaped=True, pre_ln=False))  # fmt: skip
        sp, sm, c = self._shaped_relu()
        mlp = ("mlp", dict(lam=lam, gamma=self.gamma, s_plus=sp, s_minus=sm, c=c, pre_ln=False))
        lin = ("linear", dict(lam=lam, gamma=self.gamma))
        return {"block": (att, mlp), "attention": (att,), "mlp": (mlp,), "linear": (lin,)}[self.layers]

    def sde(self):
        """The covariance SDE this network converges to (n -> infinity, T = depth / n)."""
        from ..covariance import models as cm

        if self.layers == "block":
            return cm.ShapedBlockSDE(self.gamma, self.tau0, self.c_plus, self.c_minus, self.heads)
        if self.layers == "attention":
            return cm.ShapedAttentionSDE(self.gamma, self.tau0, self.heads)
        if self.layers == "mlp":
            return cm.ResidualShapedMLPSDE(self.gamma, self.c_plus, self.c_minus)
        return cm.ResidualLinearSDE(self.gamma)


@dataclass(frozen=True)
class StandardTransformer(_Network):
    """Softmax attention (tau = sqrt(n_k), no centring), residual weights lambda, gamma.

    Parameters
    ----------
    n, n_k, gamma, heads : as for :class:`ShapedTransformer`.
    pre_ln : layer norm (no affine part) on the input of each sub-layer.
    mlp : add a residual ReLU MLP (s_+ = 1, s_- = 0, c = 2) after attention.
    """

    n: int
    gamma: float
    n_k: int | None = None
    heads: int = 1
    pre_ln: bool = False
    mlp: bool = False

    def __post_init__(self):
        check_positive_int("n", self.n, minimum=2)
        check_in_range("gamma", self.gamma, 0.0, 1.0, lo_open=True)
        if self.n_k is not None:
            check_positive_int("n_k", self.n_k)
        check_positive_int("heads", self.heads)
        if self.n % self.heads:
            raise ParameterError("heads", f"n={self.n} is not divisible by heads={self.heads}")

    @property
    def name(self) -> str:
        return "standard-transformer" + ("-preln" if self.pre_ln else "") + ("-mlp" if self.mlp else "")

    @property
    def key_width(self) -> int:
        return self.n if self.n_k is None else self.n_k

    def sublayers(self):
        lam = math.sqrt(1.0 - self.gamma**2)
        nk = self.key_width
        out = [("attention", dict(lam=lam, gamma=self.gamma, heads=self.heads, n_k=nk,
                                  temperature=math.sqrt(nk), shaped=False, pre_ln=self.pre_ln))]  # fmt: skip
        if self.mlp:
            out.append(("mlp", dict(lam=lam, gamma=self.gamma, s_plus=1.0, s_minus=0.0, c=2.0, pre_ln=self.pre_ln)))
        return tuple(out)


@dataclass(frozen=True)
class ShapedMLP(_Network):
    """LNR's shaped-ReLU MLP without residual; records LNR's V = (c/n) sigma_s(z) sigma_s(z)^T."""

    n: int
    c_plus: float = 0.0
    c_minus: float = -1.0

    def __post_init__(self):
        check_positive_int("n", self.n, minimum=2)
        _finite("c_plus", self.c_plus)
        _finite("c_minus", self.c_minus)

    @property
    def name(self) -> str:
        return "shaped-mlp"

    def sublayers(self):
        sp, sm, c = self._shaped_relu()
        return (("lnr-mlp", dict(s_plus=sp, s_minus=sm, c=c)),)

    def sde(self):
        from ..covariance.models import ShapedMLPSDE

        return ShapedMLPSDE(self.c_plus, self.c_minus)
