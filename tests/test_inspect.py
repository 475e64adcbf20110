"""Threshold statistics (MaxDiff / AvgDiff, negative thresholds), the graph summary, and `ann2snn inspect`."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import ann2snn
from ann2snn.cli.main import cli
from ann2snn.errors import Ann2SnnError
from ann2snn.inspect import inspect_graph, inspect_thresholds, threshold_spread, threshold_stats
from ann2snn.layers import QCFS


def test_spread_by_hand():
    # pair differences of (1, 2, 4): 1, 3, 2 -> MaxDiff 3, AvgDiff 2
    assert threshold_spread(torch.tensor([4.0, 1.0, 2.0])) == pytest.approx((3.0, 2.0))
    assert threshold_spread(torch.tensor([2.5])) == (0.0, 0.0)
    assert threshold_spread(torch.tensor([1.0, 1.0, 1.0])) == (0.0, 0.0)


def test_spread_matches_brute_force_pairs():
    x = torch.rand(17, generator=torch.Generator().manual_seed(0)) * 3
    pairs = [abs(float(a - b)) for a, b in itertools.combinations(x.tolist(), 2)]
    max_diff, avg_diff = threshold_spread(x)
    assert max_diff == pytest.approx(max(pairs))
    assert avg_diff == pytest.approx(sum(pairs) / len(pairs))


def test_stats_and_empty():
    s = threshold_stats(torch.tensor([1.0, 2.0, 4.0]))
    assert (s["count"], s["min"], s["max"]) == (3, 1.0, 4.0)
    assert s["mean"] == pytest.approx(7 / 3)
    with pytest.raises(Ann2SnnError):
        threshold_spread(torch.tensor([]))


def test_negative_thresholds_flagged():
    plain = QCFS(4, granularity="channel", num_channels=4, positive="none", init_threshold=1.0)
    soft = QCFS(4, granularity="channel", num_channels=3, positive="softplus", init_threshold=1.0)
    with torch.no_grad():
        plain.lam.copy_(torch.tensor([1.0, -0.5, 0.0, 2.0]))
        soft.lam.copy_(torch.tensor([-1.0, 0.5, 2.0]))
    rows = inspect_thresholds(nn.Sequential(nn.Conv2d(1, 4, 1), plain, nn.Conv2d(4, 3, 1), soft))
    assert [r["name"] for r in rows] == ["1", "3"]
    assert rows[0]["raw_nonpositive"] == 2 and rows[0]["theta_nonpositive"] == 2
    assert rows[0]["min"] == -0.5 and rows[0]["max_diff"] == pytest.approx(2.5)
    assert rows[1]["raw_nonpositive"] == 1 and rows[1]["theta_nonpositive"] == 0
    assert rows[1]["min"] == pytest.approx(float(nn.functional.softplus(torch.tensor(-1.0))))
    assert rows[1]["granularity"] == "channel" and rows[1]["levels"] == 4 and rows[1]["shift"] == 0.5


def test_no_qcfs_is_an_error():
    with pytest.raises(Ann2SnnError, match="no QCFS"):
        inspect_thresholds(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


def test_graph_summary():
    qann = ann2snn.models.create("digits-cnn", levels=2, channels=4, init_threshold=2.0)
    g = inspect_graph(qann)
    assert g["nodes_before"] >= g["nodes_after"] > 0
    assert len(g["batchnorm_folded"]) == 2 and len(g["thresholds_folded"]) == 2
    assert [n["state_shape"] for n in g["neurons"]] == [[4, 8, 8], [8, 8, 8]]
    assert all(n["threshold"] == "1" and n["original_min"] == pytest.approx(2.0) for n in g["neurons"])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    qann = ann2snn.models.create("digits-cnn", levels=2, channels=4, granularity="channel", init_threshold=2.0)
    with torch.no_grad():
        qann[2].lam.add_(torch.linspace(-0.5, 0.5, 4))
    return ann2snn.save(qann, tmp_path_factory.mktemp("m") / "cw.pt")


def test_cli_thresholds_table_json_and_plot(model_file, tmp_path):
    r = CliRunner().invoke(cli, ["inspect", "thresholds", str(model_file)])
    assert r.exit_code == 0, r.output
    assert "MaxDiff" in r.output and "channel" in r.output
    png = tmp_path / "th.png"
    r = CliRunner().invoke(cli, ["inspect", "thresholds", str(model_file), "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["layers"]
    assert rows[0]["count"] == 4 and rows[0]["max_diff"] > 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(cli, ["inspect", "thresholds", str(model_file), "--plot", str(png)])
    assert r.exit_code != 0 and "--force" in str(r.exception)


def test_cli_graph(model_file):
    r = CliRunner().invoke(cli, ["inspect", "graph", str(model_file)])
    assert r.exit_code == 0, r.output
    assert "Neurons" in r.output and "fold_thresholds" in r.output and "4×8×8" in r.output


def test_cli_no_qcfs_model(tmp_path, capsys):
    from ann2snn.cli.main import main

    path = tmp_path / "relu.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), path)
    with pytest.raises(SystemExit) as exc:
        main(["inspect", "thresholds", str(path), "--trust-pickle"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "no QCFS layer" in err and len(err.strip().splitlines()) == 1
