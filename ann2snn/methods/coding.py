"""Rate (Bernoulli) input coding, beside the direct coding the simulator uses by default.

The seed's "double threshold" paper codes an input intensity ``u ∈ [0, 1]`` as a spike train ``s_t = [c·u > U_t]``,
``U_t ~ U(0, 1)`` (its eq. 17): a pixel fires with probability ``c·u`` at each step. A model's input is usually the
normalized image ``x = (u − μ)/σ``, an affine map of the intensity, so ann2snn codes the intensity and maps the
spikes back: with ``low``/``high`` the input values of intensity 0 and 1 (the data's range),
``u = (x − low)/(high − low)`` and the message at step t is ``low + (high − low)·s_t/c`` — ``low`` where the pixel
is silent (the background of an MNIST digit never fires), one spike worth ``(high − low)/c`` where it fires. Its
expectation is ``x`` exactly while ``c·u ≤ 1`` (always, for ``c ≤ 1``).

The random numbers are drawn *outside* the graph, seeded, and the train is fed as a pre-encoded sequence
(``run_steps(..., encoding="sequence")``, the ONNX ``sequence`` encoding), so a run is reproducible and the
simulator and both ONNX forms see the same spikes.
"""

from __future__ import annotations

import torch

from ann2snn.errors import Ann2SnnError

__all__ = ["rate_encode", "check_rate_scale"]


def check_rate_scale(scale: float) -> float:
    """``scale`` as a float, or a one-line error when it is not a positive finite number."""
    s = float(scale)
    if not (s > 0 and s < float("inf")):
        raise Ann2SnnError(f"the rate-coding scale c must be a positive number (spike probability c·u), got {scale}")
    return s


def rate_encode(x: torch.Tensor, T: int | None = None, *, scale: float = 1.0, low: float = 0.0, high: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli spike trains of ``x``: ``[T, B, ...]`` messages ``low + (high − low)·[scale·u > U_t]/scale`` with
    ``u = (x − low)/(high − low)``.

    ``x`` is ``[B, ...]`` with ``T`` (the same image at every step), or ``[T, B, ...]`` with ``T=None`` (an image
    per step, e.g. noise on some steps). ``E[message] = low + (high − low)·clip(u, 0, 1/scale)``: ``x`` itself for
    inputs in ``[low, high]`` and ``scale ≤ 1``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> seq = rate_encode(x, 8, low=float(x.min()), high=float(x.max()), generator=g)  # encoding="sequence"
    """
    scale = check_rate_scale(scale)
    if not high > low:
        raise Ann2SnnError(f"rate coding needs high > low (the input values of intensity 1 and 0), got {high}, {low}")
    if T is not None:
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise Ann2SnnError(f"T must be a positive number of time steps, got {T!r}")
        x = x.unsqueeze(0).expand(T, *x.shape)
    u = (x - low) / (high - low)
    fire = scale * u > torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return low + (high - low) / scale * fire.to(x.dtype)
