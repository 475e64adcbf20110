"""Datasets as tensors: scikit-learn's bundled digits (the embedded default). No downloads, ever."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ann2snn.errors import Ann2SnnError

__all__ = ["Dataset", "load_digits", "load_dataset", "batches"]


@dataclass
class Dataset:
    """A train/test split of images ``[N, C, H, W]`` (float32) and labels ``[N]`` (int64)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 digits (1,797 images, bundled with the package), scaled to [0, 1], split with ``seed``."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test], 10)


def load_dataset(spec: str, **kw) -> Dataset:
    """A dataset by spec: ``digits``."""
    name, _, path = spec.partition(":")
    if name == "digits":
        return load_digits(**kw)
    raise Ann2SnnError(f"unknown dataset {spec!r}; use 'digits'")


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None):
    """Yield ``(x, y)`` mini-batches of tensors already in memory."""
    idx = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
    for i in range(0, len(y), batch_size):
        j = idx[i:i + batch_size]
        yield x[j], y[j]
