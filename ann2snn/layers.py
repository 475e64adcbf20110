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
"""

from __future__ import annotations

import torch
from torch import nn

from ann2snn.errors import Ann2SnnError

__all__ = ["QCFS", "Affine", "GRANULARITIES", "to_channelwise", "qcfs_modules", "inverse_softplus"]

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

    Example:
        >>> q = QCFS(levels=4, granularity="channel", num_channels=16, positive="softplus")
        >>> q(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 16, 8, 8])

    The state dict holds one tensor, ``lam`` (raw λ): shape ``[1]`` layer-wise, ``[num_channels]`` otherwise.
    """

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
        theta = self.threshold
        if self.granularity == "layer":
            return theta.reshape([1] * ndim) if ndim else theta.reshape(())
        dim = self.dim % ndim
        shape = [1] * ndim
        shape[dim] = theta.numel()
        return theta.reshape(shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        theta = self.broadcast_threshold(z.dim())
        if self.granularity != "layer" and z.shape[self.dim % z.dim()] != self.num_channels:
            raise Ann2SnnError(
                f"QCFS with {self.num_channels} thresholds along dim {self.dim} got input of shape "
                f"{tuple(z.shape)}; build it with num_channels={z.shape[self.dim % z.dim()]}"
            )
        x = floor_ste(z * (self.levels / theta) + self.shift) / self.levels
        return torch.clamp(x, 0.0, 1.0) * theta

    def extra_repr(self) -> str:
        g = self.granularity
        if g != "layer":
            g = f"{g}={self.num_channels}, dim={self.dim}"
        return f"levels={self.levels}, shift={self.shift}, {g}, positive={self.positive}"


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


def qcfs_modules(model: nn.Module) -> list[tuple[str, QCFS]]:
    """All QCFS modules of ``model`` with their qualified names, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QCFS)]


@torch.no_grad()
def to_channelwise(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    granularity: str = "channel",
    dim: int | None = None,
) -> nn.Module:
    """Turn every layer-wise QCFS of ``model`` into a ``granularity``-wise one with the same function.

    Each new threshold starts at the layer value, so the model computes exactly what it did
    (stage 2 of two-stage CS-QCFS training starts from the stage-1 function). The number of channels is
    read from ``example_input`` by a forward pass; without one, every QCFS must already be sized.
    Works in place and returns ``model``.
    """
    if granularity == "layer":
        raise Ann2SnnError("to_channelwise needs granularity 'channel', 'head' or 'neuron', not 'layer'")
    target_dim = _DEFAULT_DIM[granularity] if dim is None else dim
    sizes: dict[str, int] = {}
    modules = qcfs_modules(model)
    if not modules:
        raise Ann2SnnError("model has no QCFS layer to make channel-wise")
    if example_input is not None:
        hooks = []
        for name, q in modules:
            def hook(mod, args, _name=name):
                sizes[_name] = args[0].shape[target_dim % args[0].dim()]
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
        if q.granularity != "layer":
            continue
        n = sizes.get(name)
        if n is None:
            raise Ann2SnnError(
                f"QCFS {name!r} was not reached by the example input; pass an example_input the model accepts"
            )
        new_lam = q.lam.detach().reshape(1).repeat(n).clone()
        q.lam = nn.Parameter(new_lam)
        q.granularity = granularity
        q.dim = target_dim
    return model

