"""Rate (Bernoulli) input coding, beside the direct coding the simulator uses by default.

The seed's "double threshold" paper codes an input pixel as a spike train ``s_t = [c·x > U_t]``, ``U_t ~ U(0, 1)``
(its eq. 17): a pixel fires with probability ``c·x`` at each step. ann2snn feeds such a train to the network as a
pre-encoded sequence (``run_steps(..., encoding="sequence")``, the ONNX ``sequence`` encoding): the random numbers
are drawn *outside* the graph, seeded, so a run is reproducible and the simulator and both ONNX forms see the same
spikes. Inputs are normalized and can be negative, so the sign is kept (``−1`` spikes for negative pixels) and each
spike carries ``1/c``: the message at step t is ``sign(x)·[c·|x| > U_t]/c``, whose expectation is ``x`` exactly
while ``c·|x| ≤ 1`` (:func:`default_rate_scale` picks ``c = 1/max|x|``, so no pixel saturates).
"""

from __future__ import annotations

import torch

from ann2snn.errors import Ann2SnnError

__all__ = ["rate_encode", "default_rate_scale", "check_rate_scale"]


def check_rate_scale(scale: float) -> float:
    """``scale`` as a float, or a one-line error when it is not a positive finite number."""
    s = float(scale)
    if not (s > 0 and s < float("inf")):
        raise Ann2SnnError(f"the rate-coding scale c must be a positive number (spike probability c·|x|), got {scale}")
    return s


def default_rate_scale(x: torch.Tensor) -> float:
    """``1 / max|x|``: the largest scale at which no input saturates (every spike probability ≤ 1)."""
    peak = float(x.abs().max()) if x.numel() else 0.0
    return 1.0 / peak if peak > 0 else 1.0


def rate_encode(x: torch.Tensor, T: int | None = None, *, scale: float, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Bernoulli spike trains of ``x``: ``[T, B, ...]`` messages ``sign(x)·[scale·|x| > U_t] / scale``.

    ``x`` is ``[B, ...]`` with ``T`` (the same image at every step), or ``[T, B, ...]`` with ``T=None`` (an image
    per step, e.g. noise on some steps). ``E[message] = clip(x, −1/scale, 1/scale)``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> seq = rate_encode(x, 8, scale=default_rate_scale(x), generator=g)   # feed with encoding="sequence"
    """
    scale = check_rate_scale(scale)
    if T is not None:
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise Ann2SnnError(f"T must be a positive number of time steps, got {T!r}")
        x = x.unsqueeze(0).expand(T, *x.shape)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.sign(x) * (scale * x.abs() > u).to(x.dtype) / scale
