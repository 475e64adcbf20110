"""Training on digits: accuracy, two-stage CS-QCFS, checkpoints, resume, run records, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

import ann2snn
from ann2snn.data import load_digits
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import qcfs_modules
from ann2snn.train import TrainConfig, fit, train

FAST = dict(arch="digits-cnn", data="digits", lr=5e-3, batch_size=64, arch_kwargs={"channels": 8})


def test_digits_reaches_95_percent_and_writes_checkpoints(tmp_path):
    res = train(TrainConfig(**FAST, epochs=6, output=str(tmp_path / "d.pt"), runs_dir=str(tmp_path / "runs")))
    assert res.metrics["test_accuracy"] >= 0.95, res.metrics["history"]
    best, last = ann2snn.load(res.best_path), ann2snn.load(res.last_path)
    assert best.arch_name == "digits-cnn" and best.checkpoint_meta["test_accuracy"] == res.metrics["best_test_accuracy"]
    assert last.checkpoint_meta["train_state"]["epoch"] == 6
    record = json.loads(res.record_path.read_text())
    assert record["kind"] == "train" and record["config"]["levels"] == 4 and "torch" in record["versions"]
    assert len(record["metrics"]["history"]) == 6
    with pytest.raises(Ann2SnnError, match="already exists"):
        train(TrainConfig(**FAST, epochs=1, output=str(tmp_path / "d.pt"), record=False))


def test_two_stage_starts_stage_2_from_the_stage_1_function(tmp_path):
    x = load_digits().x_test
    seen = {}

    def progress(event, **info):
        if event == "stage":
            with torch.no_grad():
                seen[info["stage"]] = (info["granularity"], info["model"].eval()(x))

    res = train(TrainConfig(**FAST, two_stage=(2, 1), granularity="channel", output=str(tmp_path / "cs.pt"),
                            record=False), progress=progress)
    stage1 = ann2snn.load(tmp_path / "cs.stage1.pt")
    assert all(q.granularity == "layer" for _, q in qcfs_modules(stage1))
    with torch.no_grad():
        assert torch.equal(seen[1][1], stage1(x))  # exactly the stage-1 function
    assert seen[0][0] == "layer" and seen[1][0] == "channel"
    final = ann2snn.load(res.best_path)
    assert final.arch_kwargs["granularity"] == "channel"
    assert all(q.granularity == "channel" and q.num_channels > 1 for _, q in qcfs_modules(final))
    assert [h["stage"] for h in res.metrics["history"]] == [1, 1, 2]


class _Stop(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    cfg = dict(FAST, epochs=3, record=False, data="digits")
    full = train(TrainConfig(**cfg, output=str(tmp_path / "full.pt")))

    def stop_after_2(event, **info):
        if event == "epoch" and info["epoch"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(TrainConfig(**cfg, output=str(tmp_path / "cut.pt")), progress=stop_after_2)
    resumed = train(TrainConfig(**{**cfg, "arch": None}, resume=str(tmp_path / "cut.last.pt")))
    assert resumed.best_path == tmp_path / "cut.pt"
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3]


def test_from_relu_ann_prepare_and_fine_tune(tmp_path):
    relu = train(TrainConfig(**FAST, act="relu", epochs=3, output=str(tmp_path / "relu.pt"), record=False))
    assert not qcfs_modules(relu.model) and relu.metrics["test_accuracy"] > 0.9
    q = train(TrainConfig(**{**FAST, "arch": None, "lr": 1e-3}, from_ann=str(tmp_path / "relu.pt"), epochs=2,
                          granularity="channel", output=str(tmp_path / "q.pt"), record=False))
    qann = ann2snn.load(q.best_path)
    assert qann.arch_kwargs["act"] == "qcfs" and len(qcfs_modules(qann)) == 2
    assert q.metrics["best_test_accuracy"] >= 0.9
    data = load_digits()
    snn = ann2snn.convert(qann, T=4)
    acc = float((snn.simulate(data.x_test)[-1].argmax(1) == data.y_test).float().mean())
    assert acc >= q.metrics["best_test_accuracy"] - 0.05


def test_fit_is_backwards_compatible():
    data = load_digits()
    model = ann2snn.models.create("digits-cnn", levels=4, init_threshold=2.0, channels=8)
    calls = []
    m = fit(model, data, epochs=2, lr=5e-3, seed=0, on_epoch=lambda e, loss, acc: calls.append(e))
    assert calls == [0, 1] and set(m) == {"loss", "test_accuracy", "train_accuracy"}


@pytest.mark.parametrize("args,match", [
    (["--arch", "resnet9"], "unknown architecture 'resnet9'"),
    (["--arch", "digits-cnn", "--levels", "0"], "--levels must be a positive integer"),
    (["--arch", "digits-cnn", "--levels", "-3"], "--levels must be a positive integer"),
    (["--arch", "mnist-cnn", "--data", "mnist:/nonexistent/mnist"], "'/nonexistent/mnist' does not exist"),
    (["--arch", "digits-cnn", "--data", "cifar10:{tmp}"], "lacks data_batch_1"),
    (["--arch", "digits-cnn", "--data", "mnist:{tmp}"], "has no train-images-idx3-ubyte"),
    (["--arch", "digits-cnn", "--data", "imagenet"], "unknown dataset 'imagenet'"),
    (["--arch", "mnist-cnn"], "takes inputs (1, 28, 28) but dataset 'digits' has (1, 8, 8)"),
    (["--arch", "digits-cnn", "--two-stage", "2"], "two epoch counts"),
    (["--data", "digits"], "no architecture"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, match):
    from ann2snn.cli.main import main

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["train", *args, "--epochs", "1", "-o", str(tmp_path / "x.pt")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_cli_train_json(tmp_path, capsys, monkeypatch):
    from ann2snn.cli.main import main

    monkeypatch.setenv("ANN2SNN_RUNS", str(tmp_path / "runs"))
    main(["train", "--arch", "digits-cnn", "--epochs", "1", "--lr", "5e-3", "-o", str(tmp_path / "c.pt"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["epochs"] == 1 and (tmp_path / "c.pt").is_file() and len(list((tmp_path / "runs").glob("*.json"))) == 1
