"""Every operator kind through conversion and both ONNX forms, verified on onnxruntime against the simulator.

One tiny seeded QANN per operator kind, converted under each time convention and exported with
``format="both"``: ``ann2snn.export`` runs the unrolled graph (with spike-count probes) and the stateful graph
stepped T times on onnxruntime and raises ``VerificationError`` on any mismatch. A registry kind that no case here
puts in a spiking network fails ``test_the_cases_cover_every_operator_kind``.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from helpers import Fn, randomize
from opnets import L, Residual, conv, q, seq
from tnets import TinySwin, TinyViT, sq, uq
from torch import nn
from torch.nn import functional as F

import ann2snn
from ann2snn.exporters.verify import reference
from ann2snn.layers import QCFS, Affine, SignedQCFS
from ann2snn.ops import kind_of, stateful_kinds, stateless_kinds

CONVENTIONS = ["rate", "exact"]


class Branches(nn.Module):
    """``cat`` of two differently scaled streams along channels."""

    input_shape = (2, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.a, self.qa, self.b, self.qb = conv(2, 3), q(3), conv(2, 2), q(2)
        self.c, self.qc, self.fc = nn.Conv2d(5, 4, 1), q(4), nn.Linear(4 * 36, 3)

    def forward(self, x):
        h = torch.cat([self.qa(self.a(x)), self.qb(self.b(x))], dim=1)
        return self.fc(torch.flatten(self.qc(self.c(h)), 1))


def _signed() -> nn.Module:
    learned = SignedQCFS(L, learn_negative=True, granularity="channel", num_channels=4)
    with torch.no_grad():
        learned.lam_neg.copy_(torch.tensor([0.2, 0.4, 0.7, 1.1]))
    return seq(conv(), SignedQCFS(L, alpha=0.25, granularity="channel", num_channels=4), conv(4, 4), learned,
               conv(4, 4), q(4), nn.Flatten(), nn.Linear(4 * 36, 3))


#: case -> tiny QANN builder
CASES = {
    "conv2d-grouped": lambda: seq(conv(), q(4), conv(4, 4, groups=2), q(4), nn.Flatten(), nn.Linear(4 * 36, 3)),
    "conv1d": lambda: seq(nn.Conv1d(2, 4, 3, padding=1), q(4), nn.Conv1d(4, 4, 3), q(4), nn.AvgPool1d(2),
                          nn.Flatten(), nn.Linear(4 * 3, 3), input_shape=(2, 8)),
    "linear": lambda: seq(nn.Linear(8, 6), QCFS(L, granularity="neuron", num_channels=6), nn.Linear(6, 5), q(),
                          nn.Linear(5, 3), input_shape=(8,)),
    "bn-folded-and-kept": lambda: seq(conv(), nn.BatchNorm2d(4), q(4), nn.BatchNorm2d(4), conv(4, 4), q(4),
                                      nn.Flatten(), nn.Linear(4 * 36, 3)),
    "affine": lambda: seq(conv(), q(4), Affine(torch.tensor([0.5, 2.0, 1.0, 1.5]).reshape(1, 4, 1, 1)), conv(4, 4),
                          q(4), nn.Flatten(), nn.Linear(4 * 36, 3)),
    "avg-and-adaptive-pools": lambda: seq(conv(), q(4), nn.AvgPool2d(2), conv(4, 4), q(4), nn.AdaptiveAvgPool2d(1),
                                          nn.Flatten(), nn.Linear(4, 3)),
    "functional-pools": lambda: seq(conv(), q(4), Fn(lambda x: F.avg_pool2d(x, 2)), conv(4, 4), q(4),
                                    Fn(lambda x: F.adaptive_avg_pool2d(x, (2, 2))), nn.Flatten(), nn.Linear(16, 3),
                                    input_shape=(2, 8, 8)),
    "mean": lambda: seq(conv(), q(4), nn.AdaptiveAvgPool2d(3), conv(4, 4), q(4), Fn(lambda x: x.mean((2, 3))),
                        nn.Linear(4, 3)),
    "maxpool": lambda: seq(conv(), q(4), nn.MaxPool2d(2), conv(4, 4), q(4), Fn(lambda x: F.max_pool2d(x, 3)),
                           nn.Flatten(), nn.Linear(4, 3)),
    "flatten-reshape": lambda: seq(conv(), q(4), Fn(lambda x: x.view(x.size(0), -1)), nn.Linear(4 * 36, 5), q(),
                                   nn.Linear(5, 3)),
    "add": Residual,
    "cat": Branches,
    "signed": _signed,
    # transformers: compensated products, softmax, LayerNorm, GELU; layout ops, class token, constants
    "vit-block": TinyViT,
    "vit-block-mean-pooling": lambda: TinyViT(cls_token=False),
    "swin-block": TinySwin,
    "gelu-and-product": lambda: seq(nn.Linear(4, 6), nn.GELU(), sq(6, -1), Fn(lambda x: x * x), uq(6, -1),
                                    nn.Flatten(), nn.Linear(18, 3), input_shape=(3, 4)),
}
TRANSFORMERS = {"vit-block", "vit-block-mean-pooling", "swin-block", "gelu-and-product"}
#: cases converted with options: multi-bit neurons (rate convention only)
OPTIONS = {"multibit": {"max_spikes": 2}}
CASES["multibit"] = lambda: seq(conv(), q(4), conv(4, 4), q(4), nn.Flatten(), nn.Linear(4 * 36, 3))


@lru_cache(maxsize=None)
def _snn(case: str, convention: str):
    torch.manual_seed(0)
    model = randomize(CASES[case](), seed=1, theta=(0.5, 1.5))
    options = OPTIONS.get(case, {}) if convention == "rate" else {}
    return ann2snn.convert(model, T=L if convention == "rate" else 2 * L, convention=convention, **options)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_both_onnx_forms_verify(tmp_path, case, convention):
    snn = _snn(case, convention)
    x = torch.rand(8, *snn.input_shape, generator=torch.Generator().manual_seed(2))
    _, counts = reference(snn, x, snn.T)
    assert sum(float(abs(c).sum()) for c in counts.values()) > 0, "the fixture should make neurons fire"
    res = ann2snn.export(snn, tmp_path / "m.onnx", format="both")  # raises VerificationError on a mismatch
    assert set(res.files) == {"unrolled", "stateful"} and all(p.exists() for p in res.files.values())
    assert set(res.verification) == {"unrolled", "stateful"}
    kinds = {m.kind for _, m in snn.stateful()}
    # rate: IF for unsigned quantizers, bipolar for signed ones; exact: bounded bipolar for every quantizer
    signed = case == "signed" or case in TRANSFORMERS
    expected = {"rate": {"if"} | ({"bipolar"} if signed else set()), "exact": {"bipolar"}}[convention]
    if case in OPTIONS and convention == "rate":
        expected = {"multibit"}
    assert kinds - {"maxpool", "compensated"} == expected
    assert ("compensated" in kinds) == (case in TRANSFORMERS)
    assert ("maxpool" in kinds) == (case == "maxpool")


def test_the_cases_cover_every_operator_kind():
    seen_stateless, seen_stateful = set(), set()
    for case in CASES:
        gm = _snn(case, "rate").graph_module
        modules = dict(gm.named_modules())
        seen_stateless |= {kind_of(n, modules) for n in gm.graph.nodes}
        seen_stateful |= {m.kind for _, m in _snn(case, "rate").stateful()} | {
            m.kind for _, m in _snn(case, "exact").stateful()}
    assert set(stateless_kinds()) <= seen_stateless, set(stateless_kinds()) - seen_stateless
    assert set(stateful_kinds()) <= seen_stateful, set(stateful_kinds()) - seen_stateful
