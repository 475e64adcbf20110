"""Data loaders on tiny fixtures written here: IDX files (raw, gzip, both namings) and CIFAR python batches."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ann2snn.data import (
    DataError,
    augment,
    batches,
    default_mnist_dir,
    load_cifar,
    load_dataset,
    load_digits,
    load_mnist,
    read_idx,
)


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_mnist(d: Path, *, n_train=6, n_test=4, gz=True, dotted=False, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        arrays[split] = (images, labels)
        for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
            name = f"{split}-{kind}.idx{nd}-ubyte" if dotted else f"{split}-{kind}-idx{nd}-ubyte"
            raw = _idx_bytes(arr)
            if gz:
                (d / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (d / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (True, True), (False, True)])
def test_mnist_idx_fixture(tmp_path, gz, dotted):
    arrays = _write_mnist(tmp_path / "mnist", gz=gz, dotted=dotted)
    data = load_mnist(tmp_path / "mnist", normalize=False)
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (4, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    torch.testing.assert_close(data.x_train[:, 0] * 255, torch.from_numpy(arrays["train"][0]).float())
    assert data.y_test.tolist() == arrays["t10k"][1].tolist()
    normed = load_dataset(f"mnist:{tmp_path / 'mnist'}")
    torch.testing.assert_close(normed.x_train, (data.x_train - 0.1307) / 0.3081)
    assert normed.mean == (0.1307,) and normed.augment is None


def test_read_idx_int32_big_endian(tmp_path):
    arr = np.arange(-3, 9, dtype=np.int32).reshape(3, 4) * 1000
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    assert read_idx(tmp_path / "a").tolist() == arr.tolist()


def test_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*mnist:PATH"):
        load_dataset(f"mnist:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path / "empty")
    d = tmp_path / "bad"
    _write_mnist(d, gz=False)
    (d / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="not an IDX file"):
        load_mnist(d)
    (d / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((6, 28, 28), np.uint8))[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_mnist(d)
    _write_mnist(d, gz=False)
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="do not match"):
        load_mnist(d)


def test_mnist_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ANN2SNN_MNIST", str(tmp_path / "m"))
    assert default_mnist_dir() == tmp_path / "m"
    _write_mnist(tmp_path / "m")
    assert load_dataset("mnist").x_train.shape[0] == 6
    monkeypatch.delenv("ANN2SNN_MNIST")
    assert default_mnist_dir().parts[-3:] == ("shared", "data", "mnist")


def _write_cifar(d: Path, classes: int, *, per_batch=3, protocol=2, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    key = b"labels" if classes == 10 else b"fine_labels"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if classes == 10 else ["train", "test"]
    out = {}
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, per_batch).tolist()
        out[name] = (data, labels)
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", key: labels, b"data": data, b"filenames": [b"a.png"] * per_batch},
                        f, protocol=protocol)
    return out


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_fixture(tmp_path, protocol):
    written = _write_cifar(tmp_path / "cifar-10-batches-py", 10, protocol=protocol)
    data = load_cifar(tmp_path, classes=10, normalize=False)  # the parent directory works too
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.num_classes == 10 and data.augment == "crop+flip"
    img = torch.from_numpy(written["data_batch_2"][0][1].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(data.x_train[4], img)
    assert data.y_train[3:6].tolist() == written["data_batch_2"][1]
    normed = load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}")
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).reshape(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).reshape(1, 3, 1, 1)
    torch.testing.assert_close(normed.x_test, (data.x_test - mean) / std)


def test_cifar100_fixture(tmp_path):
    written = _write_cifar(tmp_path / "c100", 100, per_batch=4)
    data = load_dataset(f"cifar100:{tmp_path / 'c100'}")
    assert data.num_classes == 100 and data.x_train.shape == (4, 3, 32, 32)
    assert data.y_test.tolist() == written["test"][1]


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="needs a directory"):
        load_dataset("cifar100")
    _write_cifar(tmp_path / "c10", 10)
    with pytest.raises(DataError, match="lacks train, test"):  # cifar10 files read as cifar100
        load_dataset(f"cifar100:{tmp_path / 'c10'}")
    (tmp_path / "c10" / "test_batch").write_text("this is not a pickle")
    with pytest.raises(DataError, match="not a CIFAR python batch"):
        load_dataset(f"cifar10:{tmp_path / 'c10'}")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "c10" / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="not allowed"):
        load_dataset(f"cifar10:{tmp_path / 'c10'}")
    _write_cifar(tmp_path / "c10", 10)
    (tmp_path / "c10" / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                                               b"fine_labels": [0, 1]}))
    with pytest.raises(DataError, match="right CIFAR variant"):
        load_dataset(f"cifar10:{tmp_path / 'c10'}")


def test_dataset_spec_errors():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="takes no path"):
        load_dataset("digits:/tmp")


def test_digits_and_batches_unchanged():
    data = load_digits(seed=1)
    assert data.x_train.shape[1:] == (1, 8, 8) and len(data.y_test) == 359
    assert float(data.x_train.max()) <= 1.0 and data.mean is None
    xs = [xb for xb, _ in batches(data.x_test, data.y_test, 100)]
    assert [len(x) for x in xs] == [100, 100, 100, 59]


def test_augment_crop_and_flip():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    a = augment(x, generator=torch.Generator().manual_seed(0), padding=2, flip=False)
    b = augment(x, generator=torch.Generator().manual_seed(0), padding=2, flip=False)
    assert torch.equal(a, b) and a.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # every output is one 5×5 window of the zero-padded image
        windows = [padded[i, :, r:r + 5, c:c + 5] for r in range(5) for c in range(5)]
        assert any(torch.equal(a[i], w) for w in windows)
    flipped = augment(x, generator=torch.Generator().manual_seed(3), padding=0, flip=True)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    # normalized data pads with the normalized value of a black pixel
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    big = augment(torch.full((64, 3, 4, 4), 9.0), generator=torch.Generator().manual_seed(1), padding=4,
                  flip=False, mean=mean, std=std)
    assert set(big.unique().tolist()) == {-2.0, 9.0}
