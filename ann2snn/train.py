"""Training QANNs: a small, seeded loop (the straight-through QCFS gradient does the rest)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ann2snn.data import Dataset, batches

__all__ = ["fit", "accuracy"]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` in eval mode."""
    was = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, batch_size))
    model.train(was)
    return correct / len(y)


def fit(model: nn.Module, data: Dataset, *, epochs: int = 10, lr: float = 1e-2, batch_size: int = 64,
        optimizer: str = "adam", weight_decay: float = 0.0, seed: int = 0,
        on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, float]:
    """Train ``model`` on ``data`` with cross-entropy and a cosine schedule; returns the final metrics.

    ``on_epoch(epoch, loss, test_accuracy)`` is called after every epoch (progress display).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * ((len(data.y_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    loss_fn = nn.CrossEntropyLoss()
    loss_avg = float("nan")
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for xb, yb in batches(data.x_train, data.y_train, batch_size, shuffle=True, generator=g):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(yb)
            n += len(yb)
        loss_avg = total / n
        if on_epoch is not None:
            on_epoch(epoch, loss_avg, accuracy(model, data.x_test, data.y_test))
    model.eval()
    return {"loss": loss_avg, "test_accuracy": accuracy(model, data.x_test, data.y_test),
            "train_accuracy": accuracy(model, data.x_train, data.y_train)}
