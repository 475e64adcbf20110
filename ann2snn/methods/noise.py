"""Salt-and-pepper noise for robustness curves, on the ANN's input and on chosen steps of the SNN's input.

The "double threshold" paper measures robustness by replacing a fraction p of the input pixels with the darkest
or brightest value (salt-and-pepper), at p = 0, 10, 20, 30 %, and — for the SNN — only on some of the time steps
(2 of every 5). Here:

- the ANN sees the noisy image (one seeded noise draw per image and level);
- the SNN sees the *same* noisy image at the noisy steps and the clean image at the others: with steps ``k/n``, the
  first k of every n steps are noisy (``t = 1..k, n+1..n+k, ...``); without it, every step (then SNN and ANN see
  exactly the same input).

"Darkest" and "brightest" are the data's own extremes after preprocessing (``x.min()``, ``x.max()`` of the test
split), so the noise means the same thing for any normalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ann2snn.errors import Ann2SnnError

__all__ = ["NoiseSpec", "parse_noise", "parse_noise_steps", "salt_pepper", "noisy_steps", "step_inputs"]

KINDS = ("salt-pepper",)


@dataclass(frozen=True)
class NoiseSpec:
    """What noise to evaluate: its kind, the fractions of pixels replaced, and the SNN steps it is on (``(k, n)``:
    the first k of every n steps; None: every step)."""

    kind: str = "salt-pepper"
    levels: tuple[float, ...] = (0.0,)
    steps: tuple[int, int] | None = None

    def steps_label(self) -> str:
        return "all" if self.steps is None else f"{self.steps[0]}/{self.steps[1]}"


def parse_noise(value: str) -> tuple[str, tuple[float, ...]]:
    """``"salt-pepper:0,0.1,0.2,0.3"`` → ``("salt-pepper", (0.0, 0.1, 0.2, 0.3))``; one-line error otherwise."""
    kind, sep, rest = value.partition(":")
    kind = kind.strip()
    if kind not in KINDS or not sep:
        raise Ann2SnnError(f"noise must be KIND:LEVELS with KIND one of {', '.join(KINDS)}, e.g. "
                           f"salt-pepper:0,0.1,0.2,0.3; got {value!r}")
    try:
        levels = tuple(float(p) for p in rest.split(","))
    except ValueError:
        raise Ann2SnnError(f"noise levels must be fractions of pixels in [0, 1] like 0,0.1,0.2; got {rest!r}") from None
    if not levels or any(not 0.0 <= p <= 1.0 for p in levels):
        raise Ann2SnnError(f"noise levels must be fractions of pixels in [0, 1] like 0,0.1,0.2; got {rest!r}")
    return kind, tuple(sorted(set(levels)))


def parse_noise_steps(value: str | None) -> tuple[int, int] | None:
    """``"2/5"`` → ``(2, 5)`` (the first 2 of every 5 steps are noisy); ``None`` or ``"all"`` → every step."""
    if value is None or value.strip() == "all":
        return None
    k, sep, n = value.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit() or not 0 < int(k) <= int(n):
        raise Ann2SnnError(f"noise steps must be K/N with 0 < K <= N (the first K of every N steps are noisy), or "
                           f"all; got {value!r}")
    return int(k), int(n)


def salt_pepper(x: torch.Tensor, fraction: float, *, low: float, high: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` with each element replaced, with probability ``fraction``, by ``low`` or ``high`` (half each)."""
    if fraction <= 0:
        return x
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    out = torch.where(u < fraction / 2, torch.full_like(x, low), x)
    return torch.where((u >= fraction / 2) & (u < fraction), torch.full_like(x, high), out)


def noisy_steps(T: int, steps: tuple[int, int] | None) -> torch.Tensor:
    """``[T]`` booleans: is step t (1-based) noisy? The first k of every n steps, or all."""
    t = torch.arange(T)
    if steps is None:
        return torch.ones(T, dtype=torch.bool)
    k, n = steps
    return (t % n) < k


def step_inputs(clean: torch.Tensor, noisy: torch.Tensor, T: int, steps: tuple[int, int] | None) -> torch.Tensor:
    """The SNN's per-step images ``[T, B, ...]``: ``noisy`` at the noisy steps, ``clean`` at the others."""
    mask = noisy_steps(T, steps).reshape(T, *([1] * clean.dim())).to(clean.device)
    return torch.where(mask, noisy.unsqueeze(0), clean.unsqueeze(0))
