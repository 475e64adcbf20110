"""QANN layers: the QCFS quantizer family and the small linear helpers the passes insert.

``QCFS(z) = θ · clip(floor(z·L/θ + φ) / L, 0, 1)`` (Bu et al., 2022) with one module for every variant:

============  ===========================  ==========================================
variant       ``granularity``              ``positive``
============  ===========================  ==========================================
QCFS          ``"layer"``                  ``"none"``  (θ = λ, can turn negative)
S-QCFS        ``"layer"``                  ``"softplus"`` (θ = Softplus(λ) > 0)
C-QCFS        ``"channel"``                ``"none"``
CS-QCFS       ``"channel"``                ``"softplus"``
H-/N-QCFS     ``"head"`` / ``"neuron"``    either
============  ===========================  ==========================================

:class:`SignedQCFS` is the seed's double-threshold quantizer (sthLeakyReLU): a quantized LeakyReLU clipped to
``[−θ_n, θ_p]`` with L levels on each side, for any of the granularities above.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ann2snn.errors import Ann2SnnError

__all__ = ["QCFS", "SignedQCFS", "Affine", "ClassToken", "MatMul", "Multiply", "GRANULARITIES", "to_channelwise",
           "qcfs_modules", "inverse_softplus"]

GRANULARITIES = ("layer", "channel", "head", "neuron")
_DEFAULT_DIM = {"layer": None, "channel": 1, "head": 1, "neuron": -1}


def inverse_softplus(y: float | torch.Tensor) -> torch.Tensor:
    """λ with ``Softplus(λ) = y`` (y > 0), computed stably for large and small y."""
    y = torch.as_tensor(y, dtype=torch.float32)
    return y + torch.log(-torch.expm1(-y))


class _FloorSTE(torch.autograd.Function):
    """floor in the forward pass, identity gradient (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor`` with a straight-through gradient."""
    return _FloorSTE.apply(x)


def _finite_positive(value, message: str) -> float:
    """``float(value)`` if it is a finite number > 0, else ``Ann2SnnError(message, got value)``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not math.isfinite(v) or v <= 0:
        raise Ann2SnnError(f"{message}, got {value!r}")
    return v


def _along(values: torch.Tensor, ndim: int, dim: int | None) -> torch.Tensor:
    """``values`` (``[1]`` or ``[n]``) reshaped to broadcast against a rank-``ndim`` input along ``dim``."""
    if dim is None or values.numel() == 1:
        return values.reshape([1] * ndim) if ndim else values.reshape(())
    shape = [1] * ndim
    shape[dim % ndim] = values.numel()
    return values.reshape(shape)


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation with trainable thresholds.

    Args:
        levels: quantization levels L (the SNN is exact at T = L for constant input).
        shift: φ, added before the floor; 0.5 rounds to nearest and matches an IF neuron started at θ/2.
        granularity: ``"layer"`` (one θ), ``"channel"``, ``"head"`` or ``"neuron"`` (one θ per index of ``dim``).
        num_channels: size of ``dim`` when granularity is not ``"layer"``.
        dim: the tensor dimension thresholds vary along (default 1 for channel/head, -1 for neuron).
        positive: ``"softplus"`` keeps θ = Softplus(λ) > 0; ``"none"`` uses θ = λ directly.
        init_threshold: initial θ (after Softplus).

    Examples:
        >>> q = QCFS(levels=4, granularity="channel", num_channels=16, positive="softplus")
        >>> q(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 16, 8, 8])

    The state dict holds one tensor, ``lam`` (raw λ): shape ``[1]`` layer-wise, ``[num_channels]`` otherwise.
    """

    #: Whether the output can be negative (:class:`SignedQCFS`); passes that assume ``QCFS(z) ≥ 0`` check it.
    signed = False

    def __init__(
        self,
        levels: int = 8,
        *,
        shift: float = 0.5,
        granularity: str = "layer",
        num_channels: int | None = None,
        dim: int | None = None,
        positive: str = "softplus",
        init_threshold: float = 8.0,
    ) -> None:
        super().__init__()
        if not isinstance(levels, int) or levels <= 0:
            raise Ann2SnnError(f"QCFS levels must be a positive integer, got {levels!r}")
        if granularity not in GRANULARITIES:
            raise Ann2SnnError(f"QCFS granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if positive not in ("softplus", "none"):
            raise Ann2SnnError(f"QCFS positive must be 'softplus' or 'none', got {positive!r}")
        if init_threshold <= 0:
            raise Ann2SnnError(f"QCFS init_threshold must be > 0, got {init_threshold!r}")
        if granularity != "layer" and not num_channels:
            raise Ann2SnnError(f"QCFS granularity {granularity!r} needs num_channels (size of the threshold dim)")
        self.levels = levels
        self.shift = float(shift)
        self.granularity = granularity
        self.dim = _DEFAULT_DIM[granularity] if dim is None else dim
        self.positive = positive
        n = 1 if granularity == "layer" else int(num_channels)
        raw = inverse_softplus(init_threshold) if positive == "softplus" else torch.tensor(float(init_threshold))
        self.lam = nn.Parameter(raw.reshape(1).repeat(n).clone())

    @property
    def num_channels(self) -> int:
        return self.lam.numel()

    @property
    def threshold(self) -> torch.Tensor:
        """θ per threshold index, shape ``[1]`` or ``[num_channels]`` (after Softplus when enabled)."""
        return nn.functional.softplus(self.lam) if self.positive == "softplus" else self.lam

    def broadcast_threshold(self, ndim: int) -> torch.Tensor:
        """θ reshaped to broadcast against an input of rank ``ndim``."""
        return _along(self.threshold, ndim, None if self.granularity == "layer" else self.dim)

    def _input_threshold(self, z: torch.Tensor) -> torch.Tensor:
        """θ broadcast against ``z``, after checking ``z`` has one entry per threshold along ``dim``."""
        if self.granularity != "layer" and z.shape[self.dim % z.dim()] != self.num_channels:
            raise Ann2SnnError(
                f"{type(self).__name__} with {self.num_channels} thresholds along dim {self.dim} got input of shape "
                f"{tuple(z.shape)}; build it with num_channels={z.shape[self.dim % z.dim()]}"
            )
        return self.broadcast_threshold(z.dim())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        theta = self._input_threshold(z)
        x = floor_ste(z * (self.levels / theta) + self.shift) / self.levels
        return torch.clamp(x, 0.0, 1.0) * theta

    def to_unit(self) -> QCFS:
        """This quantizer read in threshold units: θ = 1 (fixed), same levels and shift.

        ``θ ⊙ q.to_unit()(z / θ) == q(z)``; threshold folding divides the producer by θ and multiplies θ into
        the consumers, then the unit quantizer becomes a neuron with threshold 1.
        """
        unit = QCFS(self.levels, shift=self.shift, granularity="layer", positive="none", init_threshold=1.0)
        unit.lam.requires_grad_(False)
        return unit.to(self.lam.device)

    def extra_repr(self) -> str:
        g = self.granularity
        if g != "layer":
            g = f"{g}={self.num_channels}, dim={self.dim}"
        return f"levels={self.levels}, shift={self.shift}, {g}, positive={self.positive}"


class SignedQCFS(QCFS):
    """Double-threshold (signed) QCFS, the seed's sthLeakyReLU: a quantized LeakyReLU clipped to ``[−θ_n, θ_p]``.

    ``n = clip(floor(z·L/θ + φ), −L, L)``; the output is ``θ·n/L`` for ``n ≥ 0`` and ``θ_n·n/L`` for ``n < 0``.
    The decision uses θ (= θ_p, the inherited :attr:`threshold`) on both sides, so the negative side is the
    positive one scaled by ``α = θ_n/θ_p``: a LeakyReLU of slope α, quantized to L levels each side. It converts
    to a bipolar neuron with counts in ``[−L, L]`` and spikes ±θ_p (positive side) or ±θ_n (negative side).

    Args:
        levels: as for :class:`QCFS`.
        shift: as for :class:`QCFS`.
        granularity: as for :class:`QCFS`.
        num_channels: as for :class:`QCFS`.
        dim: as for :class:`QCFS`.
        positive: as for :class:`QCFS`.
        init_threshold: as for :class:`QCFS` (θ_p).
        alpha: fixed ratio ``θ_n = α·θ_p`` (the LeakyReLU slope, > 0); θ_n follows θ_p as it trains.
        learn_negative: instead of ``alpha``, learn θ_n: its own raw ``lam_neg`` per threshold index
            (``θ_n = Softplus(λ_n)`` when ``positive="softplus"``). Give exactly one of the two.
        init_neg_threshold: initial θ_n with ``learn_negative`` (default: ``init_threshold``).

    Examples:
        >>> q = SignedQCFS(4, alpha=0.1, init_threshold=2.0)         # θ_p = 2, θ_n = 0.2, steps 0.5 / 0.05
        >>> q(torch.tensor([-40.0, -1.0, 0.3, 9.0]))
        tensor([-0.2000, -0.1000,  0.5000,  2.0000], grad_fn=<MulBackward0>)

    State dict: ``lam`` (θ_p's λ) and, with ``learn_negative``, ``lam_neg`` of the same shape. ``negative`` says
    how θ_n is set: ``"alpha"``, ``"learned"`` or ``"fixed"`` (the buffer ``theta_neg`` of :meth:`to_unit`).
    """

    signed = True

    def __init__(
        self,
        levels: int = 8,
        *,
        alpha: float | None = None,
        learn_negative: bool = False,
        init_neg_threshold: float | None = None,
        shift: float = 0.5,
        granularity: str = "layer",
        num_channels: int | None = None,
        dim: int | None = None,
        positive: str = "softplus",
        init_threshold: float = 8.0,
    ) -> None:
        super().__init__(levels, shift=shift, granularity=granularity, num_channels=num_channels, dim=dim,
                         positive=positive, init_threshold=init_threshold)
        if alpha is not None and learn_negative:
            raise Ann2SnnError("SignedQCFS takes alpha (fixed θ_n = α·θ_p) or learn_negative=True, not both")
        if alpha is None and not learn_negative:
            raise Ann2SnnError("SignedQCFS needs alpha (the LeakyReLU slope, θ_n = α·θ_p) or learn_negative=True")
        if init_neg_threshold is not None and not learn_negative:
            raise Ann2SnnError("SignedQCFS init_neg_threshold applies only with learn_negative=True; with alpha, "
                               "θ_n = α·θ_p")
        self.alpha: float | None = None
        self.neg_dim: int | None = None if granularity == "layer" else self.dim
        if learn_negative:
            theta_n = _finite_positive(init_threshold if init_neg_threshold is None else init_neg_threshold,
                                       "SignedQCFS init_neg_threshold must be a finite number > 0")
            raw = inverse_softplus(theta_n) if positive == "softplus" else torch.tensor(theta_n)
            self.lam_neg = nn.Parameter(raw.reshape(1).repeat(self.num_channels).clone())
            self.negative = "learned"
        else:
            self.alpha = _finite_positive(alpha, "SignedQCFS alpha must be a finite number > 0 (the negative "
                                                 "slope θ_n/θ_p)")
            self.negative = "alpha"

    @property
    def neg_threshold(self) -> torch.Tensor:
        """θ_n per threshold index, shape as :attr:`threshold` (a unit quantizer: one per index of ``neg_dim``)."""
        if self.negative == "alpha":
            return self.alpha * self.threshold
        if self.negative == "learned":
            return nn.functional.softplus(self.lam_neg) if self.positive == "softplus" else self.lam_neg
        return self.theta_neg

    def broadcast_neg_threshold(self, ndim: int) -> torch.Tensor:
        """θ_n reshaped to broadcast against an input of rank ``ndim``."""
        return _along(self.neg_threshold, ndim, self.neg_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        theta = self._input_threshold(z)
        theta_n = self.broadcast_neg_threshold(z.dim())
        if self.neg_dim is not None and theta_n.numel() > 1 and z.shape[self.neg_dim % z.dim()] != theta_n.numel():
            raise Ann2SnnError(f"SignedQCFS with {theta_n.numel()} negative thresholds along dim {self.neg_dim} got "
                               f"input of shape {tuple(z.shape)}")
        x = torch.clamp(floor_ste(z * (self.levels / theta) + self.shift) / self.levels, -1.0, 1.0)
        return x * torch.where(x >= 0, theta, theta_n)

    def to_unit(self) -> SignedQCFS:
        """This quantizer read in units of θ_p: θ_p = 1 and θ_n = θ_n/θ_p, both fixed.

        θ_n/θ_p is kept as the buffer ``theta_neg``: one value when it is the same everywhere (always so with
        ``alpha``), else one per index of ``dim``, so :meth:`broadcast_neg_threshold` works as for thresholds.
        ``θ ⊙ q.to_unit()(z / θ) == q(z)`` up to float rounding of the negative side's product.
        """
        if self.negative == "alpha":
            ratio = torch.full((1,), self.alpha)
        else:
            ratio = (self.neg_threshold / self.threshold).detach().float().reshape(-1)
            if bool(torch.all(ratio == ratio[0])):
                ratio = ratio[:1]
        unit = SignedQCFS(self.levels, alpha=1.0, shift=self.shift, granularity="layer", positive="none",
                          init_threshold=1.0)
        unit.lam.requires_grad_(False)
        unit.alpha = None
        unit.negative = "fixed"
        unit.neg_dim = None if ratio.numel() == 1 else self.neg_dim
        unit.register_buffer("theta_neg", ratio.clone())
        return unit.to(self.lam.device)

    def extra_repr(self) -> str:
        if self.negative == "alpha":
            neg = f"alpha={self.alpha:g}"
        elif self.negative == "learned":
            neg = "negative=learned"
        else:
            t = self.theta_neg
            neg = f"theta_neg={float(t):g}" if t.numel() == 1 else f"theta_neg=tensor({t.numel()}, dim={self.neg_dim})"
        return f"{super().extra_repr()}, {neg}"


class Affine(nn.Module):
    """``y = weight ⊙ x + bias`` with broadcastable ``weight`` / ``bias`` buffers.

    The passes insert it for a BatchNorm that cannot fold into a neighbour and for an explicit per-channel
    scale where two differently scaled streams meet. It is linear, so it commutes with time.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}, bias={self.bias is not None}"


class ClassToken(nn.Module):
    """Prepend one learned token along dim 1: ``[B, N, D] -> [B, N + 1, D]`` (a ViT's class token).

    A module rather than ``torch.cat([token.expand(x.shape[0], -1, -1), x], 1)`` in ``forward`` so the converter
    sees one operator with a constant part (the token) and no shape arithmetic on the batch size.
    """

    def __init__(self, dim: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, int(dim)))
        nn.init.trunc_normal_(self.token, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.token.shape[-1]}"


class MatMul(nn.Module):
    """``a @ b`` as a module: what ``normalize`` makes of ``torch.matmul`` / ``@`` on two values (Q·Kᵀ, attn·V),
    so the spiking product (:class:`ann2snn.neurons.Compensated`) can replace it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Multiply(nn.Module):
    """``a * b`` of two values (not a value and a constant) as a module, for the same reason as :class:`MatMul`."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


def qcfs_modules(model: nn.Module) -> list[tuple[str, QCFS]]:
    """All QCFS modules of ``model`` (signed ones included) with their qualified names, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QCFS)]


@torch.no_grad()
def to_channelwise(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    granularity: str | dict[str, tuple[str, int]] = "channel",
    dim: int | None = None,
) -> nn.Module:
    """Turn every layer-wise QCFS of ``model`` into a ``granularity``-wise one with the same function.

    Each new threshold starts at the layer value, so the model computes exactly what it did
    (stage 2 of two-stage CS-QCFS training starts from the stage-1 function). The number of channels is
    read from ``example_input`` by a forward pass; without one, every QCFS must already be sized.
    ``granularity`` may instead map qualified QCFS names to ``(granularity, dim)`` (a transformer's
    ``threshold_plan()``: head-wise on attention, neuron-wise elsewhere); only the named QCFS change.
    Works in place and returns ``model``.
    """
    modules = qcfs_modules(model)
    if not modules:
        raise Ann2SnnError("model has no QCFS layer to make channel-wise")
    if isinstance(granularity, str):
        if granularity == "layer" or granularity not in GRANULARITIES:
            raise Ann2SnnError(f"to_channelwise needs granularity 'channel', 'head' or 'neuron', not {granularity!r}")
        targets = {name: (granularity, _DEFAULT_DIM[granularity] if dim is None else dim) for name, _ in modules}
    else:
        targets = dict(granularity)
        names = {name for name, _ in modules}
        for name, (gran, _) in targets.items():
            if name not in names or gran == "layer" or gran not in GRANULARITIES:
                raise Ann2SnnError(f"to_channelwise plan entry {name!r} → {gran!r} names no QCFS of the model or "
                                   "no granularity 'channel', 'head' or 'neuron'")
    sizes: dict[str, int] = {}
    if example_input is not None:
        hooks = []
        for name, q in modules:
            if name not in targets:
                continue
            def hook(mod, args, _name=name, _dim=targets[name][1]):
                sizes[_name] = args[0].shape[_dim % args[0].dim()]
            hooks.append(q.register_forward_pre_hook(hook))
        was_training = model.training
        model.eval()
        try:
            model(example_input)
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
    for name, q in modules:
        if q.granularity != "layer" or name not in targets:
            continue
        target, target_dim = targets[name]
        n = sizes.get(name)
        if n is None:
            raise Ann2SnnError(
                f"QCFS {name!r} was not reached by the example input; pass an example_input the model accepts"
            )
        if q.signed and q.negative == "fixed":
            raise Ann2SnnError(f"{name!r} is a folded unit quantizer (SignedQCFS.to_unit); make the QANN "
                               "channel-wise before converting it, not the converted graph")
        q.lam = nn.Parameter(q.lam.detach().reshape(1).repeat(n).clone())
        if q.signed and q.negative == "learned":  # λ_n follows λ: one copy of the layer value per channel
            q.lam_neg = nn.Parameter(q.lam_neg.detach().reshape(1).repeat(n).clone())
        q.granularity = target
        q.dim = target_dim
        if q.signed:
            q.neg_dim = target_dim
    return model
