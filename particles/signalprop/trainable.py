"""A trainable transformer of the reference architecture, initialised by the signal-propagation hyperparameters.

Tokens t_1..t_n -> x_i = E[t_i] + P_i (embedding and positional vectors with entries
N(0, 1/2), so q = |x|^2 / d ~ 1), then ``depth`` reference blocks (see :mod:`.config`)
whose weights are drawn with exactly the variances of the random model, then logits
LN(x_i) R^T. The residual strengths alpha_A, alpha_M (and beta) are fixed constants;
every weight matrix, the biases, E, P and R are trained.

References
----------
MODELS.md section 3 (reference model, trainability experiment); Cowsik et al.,
arXiv:2403.02579, section 4 (final loss predicted by (lambda_a, lambda_g) at initialisation).
"""

from __future__ import annotations

import math

import torch

from integrators.validation import ParameterError, check_positive_int
from .config import SignalPropParams
from .finite import PHI_TORCH

__all__ = ["TrainableTransformer"]


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x * math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


class TrainableTransformer(torch.nn.Module):
    """Reference-model transformer with trainable weights; ``forward(tokens (B, n)) -> logits (B, n, vocab)``."""

    def __init__(
        self,
        params: SignalPropParams,
        vocab: int,
        d: int,
        depth: int,
        d_mlp: int | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(params, SignalPropParams):
            raise ParameterError("params", f"expected SignalPropParams, got {type(params).__name__}")
        self.params = params
        self.vocab = check_positive_int("vocab", vocab, minimum=2)
        self.d = check_positive_int("d", d, minimum=2)
        self.depth = check_positive_int("depth", depth)
        self.d_mlp = self.d if d_mlp is None else check_positive_int("d_mlp", d_mlp)
        gen = torch.Generator().manual_seed(int(seed))
        n, dm = params.n, self.d_mlp

        def w(*shape, std):
            return torch.nn.Parameter(std * torch.randn(*shape, generator=gen, dtype=dtype))

        self.embed = w(self.vocab, d, std=math.sqrt(0.5))
        self.pos = w(n, d, std=math.sqrt(0.5))
        self.wq = torch.nn.ParameterList([w(d, d, std=math.sqrt(params.sigma_A / d)) for _ in range(depth)])
        self.wk = torch.nn.ParameterList([w(d, d, std=math.sqrt(params.sigma_A / d)) for _ in range(depth)])
        self.wv = torch.nn.ParameterList([w(d, d, std=params.sigma_V / math.sqrt(d)) for _ in range(depth)])
        self.w1 = torch.nn.ParameterList([w(dm, d, std=params.sigma_w / math.sqrt(d)) for _ in range(depth)])
        self.b1 = torch.nn.ParameterList([w(dm, std=params.sigma_b) for _ in range(depth)])
        self.w2 = torch.nn.ParameterList([w(d, dm, std=params.sigma_2 / math.sqrt(dm)) for _ in range(depth)])
        self.readout = w(self.vocab, d, std=1.0 / math.sqrt(d))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x) if self.params.layer_norm else x

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Residual stream after the last block, (B, n, d)."""
        pr = self.params
        if tokens.ndim != 2 or tokens.shape[1] != pr.n:
            raise ParameterError("tokens", f"expected shape (batch, {pr.n}), got {tuple(tokens.shape)}")
        x = self.embed[tokens] + self.pos
        phi = PHI_TORCH[pr.phi][0]
        sq = math.sqrt(self.d)
        for l in range(self.depth):
            if pr.alpha_A > 0:
                u = self._norm(x)
                q, k, v = u @ self.wq[l].T, u @ self.wk[l].T, u @ self.wv[l].T
                att = torch.softmax(q @ k.transpose(-1, -2) / sq, dim=-1) @ v
                x = pr.beta_A * x + pr.alpha_A * att
            else:
                x = pr.beta_A * x
            if pr.alpha_M > 0:
                u = self._norm(x)
                x = pr.beta_M * x + pr.alpha_M * (phi(u @ self.w1[l].T + self.b1[l]) @ self.w2[l].T)
            else:
                x = pr.beta_M * x
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return _rms_norm(self.hidden(tokens)) @ self.readout.T
