"""The random-readout gradient estimator on finite random transformers (reverse mode).

lambda_L = (1/L) log( ||J^T R||^2 / ||R||^2 ): J the end-to-end Jacobian of L blocks at the
input X_0 (a regular simplex at (q0, c0)), R an (n x d) readout with iid N(0, 1) entries, the
gradient of the random-readout loss <R, X_L> with respect to X_0. Averaged over readouts,
||J^T R||^2 estimates ||J||_F^2 (E_R ||J^T R||^2 = tr(J J^T)), the quantity the forward
Hutchinson probes of :mod:`.measure` estimate too; the per-network value is the log of the
readout mean, the estimate is the mean over networks with its standard error.

The vector-Jacobian product runs through torch autograd, so the weights must not depend on
the input: the network uses ``sampling="explicit"`` (the projected sampler draws R W in law
through a QR of the input, whose derivative is not the network's).

References
----------
Cowsik et al., arXiv:2403.02579, section 3.4; :mod:`.candidates` (the large-width value).
"""

from __future__ import annotations

import numpy as np
import torch

from integrators.validation import check_in_range, check_positive, check_positive_int
from .config import SignalPropParams
from .finite import RandomTransformer, _Draws
from .measure import Measurement, _summary
from .states import simplex_tokens

__all__ = ["measure_readout_exponent", "readout_gradients"]


def readout_gradients(
    net: RandomTransformer, x0: torch.Tensor, depth: int, readouts: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(X_L, J^T R): the output of ``depth`` explicit blocks and the readout gradients at ``x0``.

    ``x0`` (batch, n, d); ``readouts`` (batch, K, n, d); returns X_L (batch, n, d) and
    J^T R (batch, K, n, d). ``seed`` fixes every weight, drawn in the order of
    :meth:`RandomTransformer.run`, so ``net.run(x0, depth, seed)`` meets the same network.
    """
    if net.sampling != "explicit":
        from integrators.validation import ParameterError

        raise ParameterError("net", "reverse-mode readouts need sampling='explicit' (input-independent weights)")
    depth = check_positive_int("depth", depth)
    gen = torch.Generator(device=net.device)
    gen.manual_seed(int(seed))
    draws = _Draws(gen, "explicit")
    x_in = x0.detach().to(dtype=net.dtype, device=net.device).requires_grad_(True)
    with torch.enable_grad():
        x = x_in
        for _ in range(depth):
            x = net.block(x, None, draws)[2]
        grads = [
            torch.autograd.grad(x, x_in, grad_outputs=readouts[:, k], retain_graph=k + 1 < readouts.shape[1])[0]
            for k in range(readouts.shape[1])
        ]
    return x.detach(), torch.stack(grads, dim=1)


def measure_readout_exponent(
    params: SignalPropParams,
    d: int,
    depth: int = 16,
    batch: int = 4,
    n_readouts: int = 4,
    seed: int = 0,
    c0: float = 0.0,
    q0: float = 1.0,
    d_mlp: int | None = None,
) -> Measurement:
    """Candidate (iv) on finite networks: (1/L) log(mean_R ||J^T R||^2 / (n d)) per network.

    Each of ``batch`` independent networks of width ``d`` (>= n) gets ``n_readouts``
    Gaussian readouts; the start is a regular simplex at (q0, c0), randomly oriented.
    """
    check_in_range("c0", c0, -1.0 / (params.n - 1), 1.0)
    check_positive("q0", q0)
    n_readouts = check_positive_int("n_readouts", n_readouts)
    net = RandomTransformer(params, d, d_mlp, sampling="explicit")
    x0 = simplex_tokens(batch, params.n, d, q0, c0, seed=seed)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    r = torch.randn(batch, n_readouts, params.n, d, generator=gen, dtype=torch.float64)
    _, g = readout_gradients(net, x0, depth, r, seed=seed + 2)
    ratio = (g * g).sum((-1, -2)).mean(-1) / (params.n * d)  # ||R||^2 -> n d in expectation
    return _summary(np.log(ratio.cpu().numpy()) / depth)

