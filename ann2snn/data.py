"""Datasets as tensors: scikit-learn's bundled digits, MNIST (IDX files), CIFAR-10/100 (python batches).

No downloads, ever: MNIST and CIFAR are read from directories the user names. Images are float32
``[N, C, H, W]``, normalized with the dataset's standard mean/std (digits: scaled to [0, 1]); training-time
augmentation (random crop with padding, horizontal flip) is written with torch ops and seeded.
:class:`Preprocessing` says how a model's inputs were made (pixel scale, mean, std); model files and ONNX metadata
record it, and :func:`load_dataset_for` loads a dataset the way a recorded model expects it.

>>> data = load_dataset("mnist:../shared/data/mnist")
>>> data.x_train.shape, data.num_classes
(torch.Size([60000, 1, 28, 28]), 10)
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ann2snn.errors import Ann2SnnError

__all__ = ["Dataset", "DataError", "Preprocessing", "load_digits", "load_mnist", "load_cifar", "load_dataset",
           "load_dataset_for", "batches", "augment", "read_idx", "default_mnist_dir", "DATASETS"]

#: spec name -> (standard mean, standard std) per channel
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASETS = ("digits", "mnist", "cifar10", "cifar100")


class DataError(Ann2SnnError):
    """A dataset that is missing or not in the expected format."""


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input is made from an image: pixel values divided by ``pixel_max`` (into [0, 1]), then, per
    channel, ``(x − mean) / std`` when ``mean`` and ``std`` are given (``None``: the [0, 1] values as they are).

    Model files and ONNX metadata carry it, so that ``eval`` and ``prepare`` feed a model what it was trained on and
    a runtime knows what the graph's input is; ``dataset`` is informational.

    Examples:
        >>> Preprocessing(255.0, (0.1307,), (0.3081,), "mnist").describe()
        'mnist: x = pixels / 255, then (x - 0.1307) / 0.3081 per channel'
    """

    pixel_max: float = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        def finite(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not finite(self.pixel_max) or self.pixel_max <= 0:
            raise DataError(f"preprocessing pixel_max must be a finite number > 0, got {self.pixel_max!r}")
        if (self.mean is None) != (self.std is None):
            raise DataError("preprocessing needs both mean and std, or neither")
        if self.mean is not None:
            if not self.mean or len(self.mean) != len(self.std):
                raise DataError(f"preprocessing mean {self.mean} and std {self.std} need one value per channel each")
            if not all(finite(m) for m in self.mean) or not all(finite(s) and s > 0 for s in self.std):
                raise DataError(f"preprocessing mean must be finite and std finite and > 0, got mean {self.mean}, "
                                f"std {self.std}")
        if self.dataset is not None and not isinstance(self.dataset, str):
            raise DataError(f"preprocessing dataset must be a name, got {self.dataset!r}")

    @property
    def input_range(self) -> tuple[tuple[float, float], ...] | tuple[float, float]:
        """The model input's range: ``(0, 1)``, or per channel ``((0 − mean)/std, (1 − mean)/std)``."""
        if self.mean is None:
            return (0.0, 1.0)
        return tuple(((0.0 - m) / s, (1.0 - m) / s) for m, s in zip(self.mean, self.std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, ...]`` images already in [0, 1] → the model's input (a new tensor; ``x`` itself when no
        mean/std)."""
        if self.mean is None:
            return x
        if x.shape[1] != len(self.mean):
            raise DataError(f"the model's normalization has {len(self.mean)} channel(s) but the data has "
                            f"{x.shape[1]}; is this the dataset the model was trained on?")
        return _normalize(x.clone(), self.mean, self.std)

    def describe(self) -> str:
        """One line, e.g. ``mnist: x = pixels / 255, then (x - 0.1307) / 0.3081 per channel``."""
        if self.mean is None:
            norm = ", used as is (no mean/std)"
        elif len(self.mean) == 1:
            norm = f", then (x - {self.mean[0]:g}) / {self.std[0]:g} per channel"
        else:
            norm = f", then (x - mean) / std per channel, mean {_join(self.mean)}, std {_join(self.std)}"
        return f"{self.dataset + ': ' if self.dataset else ''}x = pixels / {self.pixel_max:g}{norm}"

    def to_json(self) -> dict[str, Any]:
        return {"pixel_max": self.pixel_max, "mean": list(self.mean) if self.mean is not None else None,
                "std": list(self.std) if self.std is not None else None, "dataset": self.dataset,
                "input_range": [list(r) for r in self.input_range] if self.mean is not None
                else list(self.input_range)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, where: str = "the model") -> Preprocessing:
        """Read :meth:`to_json`'s form; anything malformed is a one-line error naming ``where``."""
        try:
            if not isinstance(d, Mapping):
                raise TypeError(f"a {type(d).__name__}, not a mapping")
            mean, std = d.get("mean"), d.get("std")
            return cls(float(d.get("pixel_max", 255.0)),
                       tuple(float(v) for v in mean) if mean is not None else None,
                       tuple(float(v) for v in std) if std is not None else None,
                       d.get("dataset"))
        except (TypeError, ValueError, DataError) as exc:
            raise DataError(f"{where} has a malformed preprocessing record ({exc}); re-save it, or pass --normalize"
                            ) from None


def _join(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


@dataclass
class Dataset:
    """A train/test split of images ``[N, C, H, W]`` (float32) and labels ``[N]`` (int64).

    ``mean``/``std`` are the per-channel normalization already applied (``None``: raw [0, 1] values);
    ``augment`` names the training augmentation the dataset is usually trained with (``"crop+flip"`` for CIFAR,
    ``None`` otherwise), applied by :func:`augment` in the training loop.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str | None = None
    pixel_max: float = 255.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def preprocessing(self) -> Preprocessing:
        """How these images were made from pixels (what a model trained on them expects)."""
        return Preprocessing(self.pixel_max, self.mean, self.std, self.name)


# --------------------------------------------------------------------------------------------------- digits


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 digits (1,797 images, bundled with the package), scaled to [0, 1], split with ``seed``."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test], 10, pixel_max=16.0)


# ---------------------------------------------------------------------------------------------------- MNIST

_IDX_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32, 0x0D: torch.float32,
               0x0E: torch.float64}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """One IDX file (raw or gzip, detected from its first bytes) as a tensor of its stored dtype and shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{str(path)!r} is a corrupt gzip file ({exc}); re-extract the MNIST files") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{str(path)!r} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
                        "MNIST must be the original idx1/idx3-ubyte files, raw or .gz")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r} is a truncated IDX file (header cut off)")
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for s in shape:
        count *= s
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) - header != count * itemsize:
        raise DataError(f"{str(path)!r} holds {len(raw) - header} data bytes but its header says {shape} "
                        f"({count * itemsize} bytes); the file is truncated or corrupt")
    t = torch.frombuffer(bytearray(raw[header:]), dtype=dtype)
    if itemsize > 1:  # IDX stores big-endian
        import sys

        if sys.byteorder == "little":
            t = t.view(torch.uint8).reshape(-1, itemsize).flip(1).reshape(-1).view(dtype)
    return t.reshape(shape)


def default_mnist_dir() -> Path:
    """``$ANN2SNN_MNIST``, else ``../shared/data/mnist`` next to the repository."""
    env = os.environ.get("ANN2SNN_MNIST")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"


def _find_idx(directory: Path, split: str, kind: str, ndim: int) -> Path:
    stem_a, stem_b = f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"
    for stem in (stem_a, stem_b):
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
    raise DataError(f"MNIST directory {str(directory)!r} has no {stem_a}[.gz] (or {stem_b}[.gz]); it must hold the "
                    "four original MNIST IDX files: train-images, train-labels, t10k-images, t10k-labels")


def _check_dir(directory: Path, what: str, hint: str) -> None:
    if not directory.exists():
        raise DataError(f"{what} directory {str(directory)!r} does not exist; {hint}")
    if not directory.is_dir():
        raise DataError(f"{what} path {str(directory)!r} is not a directory; {hint}")


def load_mnist(path: str | os.PathLike | None = None, *, normalize: bool = True) -> Dataset:
    """MNIST from a directory of IDX files (``train-images-idx3-ubyte[.gz]`` or ``train-images.idx3-ubyte[.gz]``).

    ``path`` defaults to :func:`default_mnist_dir`. With ``normalize`` the images are ``(x/255 - 0.1307)/0.3081``,
    else in [0, 1].
    """
    directory = Path(path) if path is not None else default_mnist_dir()
    _check_dir(directory, "MNIST", "pass mnist:PATH to the directory holding the MNIST IDX files "
                                   "(or set ANN2SNN_MNIST)")
    parts = {}
    for split in ("train", "t10k"):
        images = read_idx(_find_idx(directory, split, "images", 3))
        labels = read_idx(_find_idx(directory, split, "labels", 1))
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise DataError(f"MNIST {split} files in {str(directory)!r} do not match: images {tuple(images.shape)}, "
                            f"labels {tuple(labels.shape)}; expected [N, 28, 28] and [N]")
        parts[split] = (images.unsqueeze(1).float().div_(255.0), labels.long())
    mean, std = NORMALIZATION["mnist"] if normalize else (None, None)
    (xtr, ytr), (xte, yte) = parts["train"], parts["t10k"]
    if normalize:
        xtr, xte = _normalize(xtr, mean, std), _normalize(xte, mean, std)
    return Dataset("mnist", xtr, ytr, xte, yte, 10, mean, std, None)


# ---------------------------------------------------------------------------------------------------- CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays, lists, bytes) and nothing that could run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{str(path)!r} is not a CIFAR python batch ({type(exc).__name__}: {exc}); use the "
                        "'python version' of CIFAR (cifar-10-batches-py / cifar-100-python)") from None
    if not isinstance(d, dict):
        raise DataError(f"{str(path)!r} holds a {type(d).__name__}, not a CIFAR batch dict")
    d = {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}
    if b"data" not in d or label_key not in d:
        raise DataError(f"{str(path)!r} has keys {sorted(k.decode(errors='replace') for k in d)}, not 'data' and "
                        f"'{label_key.decode()}'; is this the right CIFAR variant (cifar10 vs cifar100)?")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{str(path)!r} has data {data.shape} and {len(labels)} labels; expected [N, 3072] and N")
    return torch.from_numpy(data.copy()).reshape(-1, 3, 32, 32), torch.from_numpy(labels.copy())


def load_cifar(path: str | os.PathLike, *, classes: int = 10, normalize: bool = True) -> Dataset:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``) python batches.

    ``path`` is the extracted directory (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
    Images are normalized with the standard per-channel mean/std; training uses crop+flip augmentation.
    """
    if classes not in (10, 100):
        raise DataError(f"CIFAR has 10 or 100 classes, not {classes}")
    name = f"cifar{classes}"
    directory = Path(path)
    hint = f"pass {name}:PATH to the extracted python-batches directory"
    _check_dir(directory, name.upper().replace("CIFAR", "CIFAR-"), hint)
    sub = directory / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    if sub.is_dir():
        directory = sub
    if classes == 10:
        train_files = [directory / f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = [directory / "test_batch"], b"labels"
    else:
        train_files, test_files, label_key = [directory / "train"], [directory / "test"], b"fine_labels"
    missing = [p.name for p in train_files + test_files if not p.is_file()]
    if missing:
        raise DataError(f"{name} directory {str(directory)!r} lacks {', '.join(missing)}; {hint} "
                        f"({'data_batch_1..5 and test_batch' if classes == 10 else 'train and test'})")

    def read(files):
        xs, ys = zip(*(_read_cifar_batch(p, label_key) for p in files))
        return torch.cat(xs).float().div_(255.0), torch.cat(ys)

    (xtr, ytr), (xte, yte) = read(train_files), read(test_files)
    for y in (ytr, yte):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise DataError(f"{name} labels in {str(directory)!r} range over [{int(y.min())}, {int(y.max())}], "
                            f"not [0, {classes - 1}]; is this {'cifar100' if classes == 10 else 'cifar10'}?")
    mean, std = NORMALIZATION[name] if normalize else (None, None)
    if normalize:
        xtr, xte = _normalize(xtr, mean, std), _normalize(xte, mean, std)
    return Dataset(name, xtr, ytr, xte, yte, classes, mean, std, "crop+flip")


# ----------------------------------------------------------------------------------------------- shared bits


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).reshape(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def augment(x: torch.Tensor, *, generator: torch.Generator | None = None, padding: int = 4, flip: bool = True,
            mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> torch.Tensor:
    """Random crop with ``padding`` and random horizontal flip of a batch ``[B, C, H, W]``, per image.

    The padding is black in raw pixel space (``(0 - mean)/std`` once normalized), as torchvision pads before
    normalizing. ``generator`` (on ``x``'s device) makes it reproducible.
    """
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        fill = torch.zeros(c, dtype=x.dtype, device=dev)
        if mean is not None and std is not None:
            fill = (-torch.tensor(mean, dtype=x.dtype, device=dev) / torch.tensor(std, dtype=x.dtype, device=dev))
        padded = fill.reshape(1, c, 1, 1).expand(b, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding:padding + h, padding:padding + w] = x
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # [B, H, 1]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # [B, 1, W]
        bidx = torch.arange(b, device=dev)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2)  # [B, C, H, W]
    if flip:
        mask = torch.rand(b, generator=generator, device=dev) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def load_dataset(spec: str, **kw) -> Dataset:
    """A dataset by spec: ``digits``, ``mnist[:PATH]``, ``cifar10:PATH``, ``cifar100:PATH``.

    ``mnist`` without a path reads :func:`default_mnist_dir`; ``cifar10``/``cifar100`` without one read
    ``$ANN2SNN_CIFAR10`` / ``$ANN2SNN_CIFAR100``. Keyword arguments go to the loader (``seed`` for digits,
    ``normalize`` for the others).

    Examples:
        >>> data = load_dataset("cifar10:/data/cifar-10-batches-py")
    """
    name, _, path = spec.partition(":")
    name = name.strip().lower()
    if name == "digits":
        if path:
            raise DataError(f"dataset 'digits' is bundled and takes no path, got {spec!r}; use 'digits'")
        return load_digits(**kw)
    if name == "mnist":
        return load_mnist(path or None, **kw)
    if name in ("cifar10", "cifar100"):
        path = path or os.environ.get(f"ANN2SNN_{name.upper()}", "")
        if not path:
            raise DataError(f"dataset {name!r} needs a directory: use {name}:PATH (the extracted python batches) "
                            f"or set ANN2SNN_{name.upper()}")
        return load_cifar(path, classes=int(name[5:]), **kw)
    raise DataError(f"unknown dataset {spec!r}; use digits, mnist[:PATH], cifar10:PATH or cifar100:PATH")


def load_dataset_for(spec: str, preprocessing: Preprocessing | None, **kw) -> Dataset:
    """Dataset ``spec`` as a model with ``preprocessing`` expects it: images in [0, 1], then normalized with the
    model's own mean/std (not the dataset's standard ones). ``None``: as :func:`load_dataset` gives it.

    Examples:
        >>> data = load_dataset_for("mnist", Preprocessing(255.0))   # raw pixels / 255 for a model trained so
    """
    if preprocessing is None:
        return load_dataset(spec, **kw)
    name = spec.partition(":")[0].strip().lower()
    data = load_dataset(spec, **kw) if name == "digits" else load_dataset(spec, normalize=False, **kw)
    data.x_train = preprocessing.normalize(data.x_train)
    data.x_test = preprocessing.normalize(data.x_test)
    data.mean, data.std = preprocessing.mean, preprocessing.std
    return data


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None):
    """Yield ``(x, y)`` mini-batches of tensors already in memory."""
    idx = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
    for i in range(0, len(y), batch_size):
        j = idx[i:i + batch_size]
        yield x[j], y[j]
