"""Device-side pieces of ``solve`` on the torch backend: initial states already on a GPU.

A CUDA tensor handed to ``solve`` is validated where it lives (one reduction and one
read-back, once per run) instead of being copied to the host: for the sphere flows the
checks of :func:`particles.sphere.init.check_unit` (shape, finite, unit rows or ``normalize``);
other models are validated through their own ``check_state`` on a host copy (their
states are small next to the run).
"""

from __future__ import annotations

from integrators.validation import ParameterError

__all__ = ["check_device_state", "is_device_tensor"]


def is_device_tensor(x) -> bool:
    """True for a torch tensor that lives off the CPU."""
    return type(x).__module__.startswith("torch") and getattr(x, "device", None) is not None and x.device.type != "cpu"


def check_device_state(model, x0, normalize: bool, backend):
    """Validate a device tensor as ``model.check_state`` would; returns a tensor on ``backend``'s device and dtype."""
    import torch

    if str(x0.device) != str(torch.device(backend.device)) and torch.device(backend.device).index is not None:
        raise ParameterError("x0", f"the initial state is on {x0.device} but the backend runs on {backend.device}")
    sphere = type(getattr(model, "space", None)).__name__ == "Sphere"
    if not sphere:
        host = model.check_state(x0.detach().cpu().numpy(), normalize=normalize)
        return backend.asarray(host)
    x = x0.detach()
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise ParameterError("x0", f"expected shape (n, d) or (batch, n, d), got {tuple(x.shape)}")
    if x.shape[1] < 1 or x.shape[2] < 2:
        raise ParameterError("x0", f"need n >= 1 tokens of dimension d >= 2, got {tuple(x.shape)}")
    dim = getattr(model, "_dim", None) or getattr(getattr(model, "field", None), "_dim", None)
    if dim is not None and x.shape[-1] != dim:
        raise ParameterError("x0", f"tokens have dimension {x.shape[-1]} but Q/K/V act on R^{dim}")
    x = backend.asarray(x)
    norms = torch.linalg.vector_norm(x.double(), dim=-1)
    # one read-back for all checks: non-finite, zero rows, the largest deviation from 1
    finite, zero, err = torch.stack(
        [torch.isfinite(x).all().double(), (norms == 0).any().double(), (norms - 1).abs().amax()]
    ).tolist()
    if not finite:
        raise ParameterError("x0", "contains NaN or infinite entries")
    if normalize:
        if zero:
            raise ParameterError("x0", "a token is the zero vector and cannot be normalised")
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    tol = max(1e-8, 8 * torch.finfo(x.dtype).eps)  # a float32 state is unit only to float32 rounding
    if err > tol:
        raise ParameterError(
            "x0", f"tokens must be unit vectors (max | |x_i| - 1 | = {err:.3g}); pass normalize=True to normalise them"
        )
    return x
