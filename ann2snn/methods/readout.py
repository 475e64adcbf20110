"""A leaky (LIF) read-out layer and its unsupervised STDP training, after the "double threshold" paper.

**LIF read-out** (eq. 18 there). The output layer's per-step current ``I_t = W·s_t + b`` (the spiking network's
instantaneous output) drives one LIF neuron per class with leak γ and soft reset::

    V_t = γ·V_{t−1} + I_t;   o_t = max(floor(V_t/θ_o), 0);   V_t −= o_t·θ_o

and the class score after t steps is ``(θ_o·Σ o + V_t)/t``: the spikes emitted so far plus the charge left on
the membrane. Emitted spikes are kept; only the sub-threshold charge leaks, so evidence that never made it to a
spike (in particular negative evidence) fades at rate γ. With γ = 1 the score is exactly the plain read-out
``Σ I_t / t`` (nothing leaks); γ < 1 weighs recent steps more — what makes the read-out robust when only some
steps are noisy. It runs on the network's per-step outputs, outside the graph (for an ONNX file: the differences
of ``logits_per_step·t``, or ``logits_t`` of the stateful graph).

**STDP** (eqs. 19–20): pair-based, on the read-out weights W (the last Linear of the network), unsupervised.
With presynaptic activity ``s_t`` (the Linear's input at step t: spikes, or pooled spikes) and the read-out's
spikes ``o_t``, traces ``x_t = e^{−1/τ+}·x_{t−1} + s_t`` and ``y_t = e^{−1/τ−}·y_{t−1} + o_t`` give::

    ΔW = A+ · o_t ⊗ x_t  −  A− · y_{t−1} ⊗ s_t

— a pre spike at or before a post spike potentiates by ``A+·e^{−Δt/τ+}``, a post spike strictly before a pre
spike depresses by ``A−·e^{−Δt/τ−}`` (in a converted network a spike drives the next layer in the same step, so
Δt = 0 counts as causal). As in unsupervised STDP read-outs, only the most depolarized read-out neuron may spike
at a step (winner-take-all lateral inhibition) and each row of W keeps its norm; no label is used.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import fx, nn

from ann2snn.data import batches
from ann2snn.errors import Ann2SnnError
from ann2snn.simulator import run_steps

__all__ = ["LIFReadout", "STDPConfig", "readout_linear", "train_stdp"]


@dataclass(frozen=True)
class LIFReadout:
    """The LIF read-out: leak γ in (0, 1] and output threshold θ_o > 0."""

    gamma: float = 1.0
    threshold: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise Ann2SnnError(f"the read-out leak γ must lie in (0, 1] (1: no leak), got {self.gamma}")
        if not self.threshold > 0:
            raise Ann2SnnError(f"the read-out threshold must be > 0, got {self.threshold}")

    def run(self, currents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T, B, K]`` per-step currents → (scores at every t ``[T, B, K]``, output spikes ``[T, B, K]``)."""
        v = torch.zeros_like(currents[0])
        emitted = torch.zeros_like(v)
        scores, spikes = torch.empty_like(currents), torch.empty_like(currents)
        for t in range(currents.shape[0]):
            v = self.gamma * v + currents[t]
            o = torch.clamp(torch.floor(v / self.threshold), min=0.0)
            v = v - o * self.threshold
            emitted = emitted + o
            scores[t] = (emitted * self.threshold + v) / (t + 1)
            spikes[t] = o
        return scores, spikes

    def scores(self, currents: torch.Tensor) -> torch.Tensor:
        """The class scores after every step, ``[T, B, K]`` (argmax = the prediction)."""
        return self.run(currents)[0]


@dataclass(frozen=True)
class STDPConfig:
    """Pair-based STDP: amplitudes A± (relative to the mean |w| of the read-out), time constants τ± (steps),
    passes over the training images, the steps per image, and the read-out that produces the post spikes."""

    a_plus: float = 1e-2
    a_minus: float = 1.05e-2
    tau_plus: float = 2.0
    tau_minus: float = 2.0
    epochs: int = 1
    T: int = 4
    readout: LIFReadout = LIFReadout()

    def __post_init__(self) -> None:
        if min(self.a_plus, self.a_minus) < 0 or min(self.tau_plus, self.tau_minus) <= 0:
            raise Ann2SnnError("STDP needs A+, A− >= 0 and τ+, τ− > 0")
        if self.epochs < 1 or self.T < 1:
            raise Ann2SnnError(f"STDP needs epochs >= 1 and T >= 1, got {self.epochs} and {self.T}")


def readout_linear(gm: fx.GraphModule) -> tuple[fx.Node, nn.Linear]:
    """The read-out layer: the ``nn.Linear`` whose output is the network's output."""
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    m = gm.get_submodule(out.target) if isinstance(out, fx.Node) and out.op == "call_module" else None
    if not isinstance(m, nn.Linear):
        raise Ann2SnnError("STDP trains the read-out weights of a network whose last operation is an nn.Linear; "
                           f"this network ends in {out.format_node() if isinstance(out, fx.Node) else out!r}")
    return out, m


def _wta(spikes: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Keep the spikes of the most depolarized neuron of each sample only (lateral inhibition)."""
    winner = torch.nn.functional.one_hot((v + spikes * 1e6).argmax(-1), v.shape[-1]).to(spikes.dtype)
    return spikes * winner


@torch.no_grad()
def train_stdp(snn, x: torch.Tensor, config: STDPConfig = STDPConfig(), *, batch_size: int = 256,
               generator: torch.Generator | None = None):
    """A copy of ``snn`` whose read-out weights are trained by STDP on the images ``x`` (no labels).

    Returns ``(network, stats)``; ``stats`` has the relative change of the weights and the updates made."""
    from ann2snn.network import SpikingNetwork

    gm = copy.deepcopy(snn.graph_module)
    node, lin = readout_linear(gm)
    w = lin.weight
    norms = w.norm(dim=1, keepdim=True)
    scale = float(w.abs().mean())
    w0 = w.clone()
    decay_pre, decay_post = math.exp(-1.0 / config.tau_plus), math.exp(-1.0 / config.tau_minus)
    rd = config.readout
    updates = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        for xb, _ in batches(x[order], torch.zeros(len(x)), batch_size):
            seen = {}

            def observe(n, inputs, output):
                if n is node:
                    seen["pre"], seen["cur"] = inputs[0].flatten(2), output

            run_steps(gm, xb, config.T, observer=observe, schedule=snn.schedule)
            pre, cur = seen["pre"], seen["cur"]
            v = torch.zeros_like(cur[0])
            xtr, ytr = torch.zeros_like(pre[0]), torch.zeros_like(cur[0])
            dw = torch.zeros_like(w)
            for t in range(config.T):
                v = rd.gamma * v + cur[t]
                o = _wta(torch.clamp(torch.floor(v / rd.threshold), min=0.0), v)
                v = v - o * rd.threshold
                xtr = decay_pre * xtr + pre[t]
                dw += config.a_plus * o.t() @ xtr - config.a_minus * ytr.t() @ pre[t]
                ytr = decay_post * ytr + o
            w += scale * dw / len(xb)
            w.mul_(norms / w.norm(dim=1, keepdim=True).clamp(min=1e-12))
            updates += 1
    stats = {"relative_change": float((w - w0).norm() / w0.norm()), "updates": updates, "samples": len(x),
             "config": {k: v for k, v in config.__dict__.items() if k != "readout"},
             "readout": {"gamma": rd.gamma, "threshold": rd.threshold}}
    return SpikingNetwork(gm, T=snn.T, input_shape=snn.input_shape, report=snn.report, info=snn.info), stats
