"""The seeds' other methods (ann2snn.methods): rate coding, salt-and-pepper noise, multi-bit spikes, COS, SRP,
the LIF read-out and STDP — one identity or property test each where one exists, hand examples for the formulas,
and a small numeric regression on digits."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_qann, randomize
from opnets import conv, q, seq
from torch import nn

import ann2snn
from ann2snn.energy import ActivityMonitor
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS
from ann2snn.methods import (
    LIFReadout,
    Method,
    NoiseSpec,
    STDPConfig,
    apply_cos,
    apply_srp,
    compare_methods,
    offset_spikes,
    parse_noise,
    parse_noise_steps,
    rate_encode,
    salt_pepper,
    srp_readout,
    train_stdp,
)
from ann2snn.methods.calibrate import count_offset_spikes
from ann2snn.methods.noise import noisy_steps, step_inputs
from ann2snn.methods.readout import readout_linear
from ann2snn.neurons import IFNeuron, MultiBitNeuron, multibit_for_qcfs
from ann2snn.simulator import readout, run_steps


def _tiny(**kw) -> nn.Module:
    torch.manual_seed(0)
    return randomize(seq(conv(), q(4), nn.AvgPool2d(2), conv(4, 4), q(4), nn.Flatten(), nn.Linear(4 * 9, 3)), seed=1,
                     theta=(0.5, 1.5))


# --- rate coding -----------------------------------------------------------------------------------------------


def test_rate_code_expectation_equals_the_input():
    """Normalized images x = (u − μ)/σ: the intensity u is coded, the message maps the spike back to the input scale;
    its mean is x (a silent pixel sends the value of intensity 0, `low`)."""
    g = torch.Generator().manual_seed(0)
    low, high = -0.5, 2.5  # the input values of intensity 0 and 1
    x = low + torch.rand(3, 5, generator=g) * (high - low)
    x[0, 0] = low
    for scale in (1.0, 0.5):
        seq_ = rate_encode(x, 20000, scale=scale, low=low, high=high, generator=g)
        assert set(torch.unique(seq_).tolist()) <= {low, low + (high - low) / scale}
        u = (x - low) / (high - low)
        sigma = (high - low) / scale * (scale * u * (1 - scale * u)).sqrt() / math.sqrt(20000)
        assert torch.all((seq_.mean(0) - x).abs() <= 5 * sigma + 1e-6)
        assert seq_[:, 0, 0].eq(low).all()  # intensity 0 never fires
    # above intensity 1/c the probability saturates: the expectation is the clipped input
    sat = rate_encode(torch.tensor([[3.0, -1.0, 0.25]]), 100, scale=1.0, generator=g)
    assert sat[:, 0, 0].eq(1).all() and sat[:, 0, 1].eq(0).all()


def test_rate_code_is_seeded_and_takes_per_step_images():
    x = torch.rand(4, 6)
    a = rate_encode(x, 5, generator=torch.Generator().manual_seed(3))
    b = rate_encode(x, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (5, 4, 6)
    per_step = torch.stack([torch.zeros(4, 6), torch.ones(4, 6)])
    c = rate_encode(per_step)
    assert c[0].eq(0).all() and c[1].eq(1).all()
    with pytest.raises(Ann2SnnError, match="positive number"):
        rate_encode(x, 5, scale=0.0)
    with pytest.raises(Ann2SnnError, match="high > low"):
        rate_encode(x, 5, low=1.0, high=1.0)


# --- noise -----------------------------------------------------------------------------------------------------


def test_salt_pepper_replaces_the_fraction_with_the_extremes():
    x = torch.full((200, 50), 0.3)
    y = salt_pepper(x, 0.2, low=-1.0, high=2.0, generator=torch.Generator().manual_seed(0))
    changed = y != x
    assert set(torch.unique(y[changed]).tolist()) == {-1.0, 2.0}
    assert float(changed.float().mean()) == pytest.approx(0.2, abs=0.01)
    assert float((y == -1).float().mean()) == pytest.approx(0.1, abs=0.01)
    assert torch.equal(salt_pepper(x, 0.0, low=0, high=1), x)


def test_noise_on_chosen_steps():
    assert noisy_steps(7, (2, 5)).tolist() == [True, True, False, False, False, True, True]
    assert noisy_steps(3, None).all()
    clean, noisy = torch.zeros(2, 3), torch.ones(2, 3)
    assert step_inputs(clean, noisy, 5, (2, 5))[:, 0, 0].tolist() == [1, 1, 0, 0, 0]
    assert parse_noise("salt-pepper:0.3,0,0.1") == ("salt-pepper", (0.0, 0.1, 0.3))
    assert parse_noise_steps("2/5") == (2, 5) and parse_noise_steps("all") is None


@pytest.mark.parametrize("bad", ["gauss:0.1", "salt-pepper", "salt-pepper:0.1,x", "salt-pepper:1.5"])
def test_bad_noise_spec(bad):
    with pytest.raises(Ann2SnnError, match="noise"):
        parse_noise(bad)


@pytest.mark.parametrize("bad", ["2", "0/5", "6/5", "a/b"])
def test_bad_noise_steps(bad):
    with pytest.raises(Ann2SnnError, match="K/N"):
        parse_noise_steps(bad)


# --- multi-bit spikes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("D", [1, 2, 3, 4])
def test_multibit_neuron_equals_qcfs_at_ceil_L_over_D(L, D):
    """For a constant input the multi-bit neuron's value after T = ⌈L/D⌉ steps is QCFS(z), per-channel θ too."""
    qcfs = QCFS(L, granularity="channel", num_channels=3)
    with torch.no_grad():
        qcfs.lam.copy_(torch.tensor([0.3, 1.0, 2.5]))
    z = torch.randn(64, 3, 2, 2, generator=torch.Generator().manual_seed(L * 10 + D)) * 2
    theta = qcfs.broadcast_threshold(4).detach()[0]
    neuron = multibit_for_qcfs(qcfs, theta, D)
    T = -(-L // D)
    value = neuron.multi_step(z.expand(T, *z.shape).clone()).mean(0)
    torch.testing.assert_close(value, qcfs(z).detach(), rtol=0, atol=1e-5)
    per_step = neuron.multi_step(z.expand(T, *z.shape).clone()) / neuron.threshold
    assert per_step.max() <= D + 1e-5 and torch.allclose(per_step, per_step.round(), atol=1e-5)


def test_multibit_with_one_spike_is_the_if_neuron():
    x = torch.randn(12, 20, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(MultiBitNeuron(0.7, shift=0.3).multi_step(x), IFNeuron(0.7, shift=0.3).multi_step(x),
                               rtol=0, atol=1e-6)


def test_convert_with_multibit_spikes():
    qann = make_qann("digits")
    snn = ann2snn.convert(qann, max_spikes=2)
    assert snn.T == 2 and snn.info.max_spikes == 2 and snn.info.neuron_kinds == ("multibit",)
    assert snn.report.counts()["multibit_neurons"] == 2
    with pytest.raises(Ann2SnnError, match="rate convention"):
        ann2snn.convert(qann, max_spikes=2, convention="exact")
    with pytest.raises(Ann2SnnError, match="max_spikes"):
        ann2snn.convert(qann, max_spikes=0)


def test_energy_counts_every_spike_of_a_multibit_message():
    """One neuron layer feeding a linear: a message of 3 spikes is 3 spike events and 3 × fan-out SOPs."""
    net = seq(_linear([[1.0, 0.0], [0.0, 1.0]]), QCFS(4, positive="none", init_threshold=4.0),
              _linear([[1.0, 1.0]] * 5), input_shape=(2,)).eval()
    snn = ann2snn.convert(net, max_spikes=4)  # after folding θ = 1: input x/4, spike value ⌈4/4⌉/4 = ¼
    x = torch.tensor([[3.2, 0.0]])  # (3.2/4 + φ/4)/(1/4) = 3.7 → three spikes at step 1
    mon = ActivityMonitor(snn.graph_module, 1)
    out = run_steps(snn.graph_module, x, 1, observer=mon)
    mon.add_samples(1)
    assert mon.firing_rates([1])[0]["spikes_per_sample"] == [3.0]
    linear = [r for r in mon.summary([1])["layers"] if not r["analog_input"]]
    assert linear[0]["sops"] == [15.0] and linear[0]["events"] == [3.0]
    assert out.shape == (1, 1, 5)


# --- COS and SRP -----------------------------------------------------------------------------------------------


def _unit(levels: int) -> QCFS:
    """A QCFS with θ = 1 exactly (no Softplus), so hand examples need no rounding allowance."""
    return QCFS(levels, positive="none", init_threshold=1.0)


def _linear(w, bias=None) -> nn.Linear:
    w = torch.tensor(w, dtype=torch.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return lin


def _uneven_net() -> nn.Module:
    """x = 1 → neurons A, B with inputs 0.6, 0.3 (A fires at step 1, B at step 2) → C = A − B → read-out."""
    return seq(_linear([[0.6], [0.3]]), _unit(2), _linear([[1.0, -1.0]]), _unit(2), _linear([[1.0]]),
               input_shape=(1,)).eval()


def test_cos_offset_spikes_by_hand():
    """T = 2, θ = 1, φ = ½. A: v = 1.1 → spike, 0.7; X = 1.2, floor(1.7) = 1 spike: ψ = 0. B: 0.8, 1.1 → spike;
    X = 0.6, floor(1.1) = 1: ψ = 0. C gets +1 at step 1 and −1 at step 2: v = 1.5 → spike, then −0.5; one spike
    although its input totals 0 (floor(0 + ½) = 0): ψ = +1. COS starts C one θ lower (v0 = −½): no spike."""
    snn = ann2snn.convert(_uneven_net(), T=2)
    gm = snn.graph_module
    names = [n for n, m in gm.named_modules() if isinstance(m, IFNeuron)]
    x = torch.ones(1, 1)
    assert offset_spikes(gm, names[0], x, 2).tolist() == [0.0, 0.0]
    assert offset_spikes(gm, names[1], x, 2).tolist() == [1.0]
    cos = apply_cos(snn, x, 2)
    mbs = [m for _, m in cos.graph_module.named_modules() if isinstance(m, MultiBitNeuron)]
    assert [m.offset.tolist() for m in mbs] == [[0.0, 0.0], [-1.0]]
    assert snn.simulate(x, 2)[-1].item() == pytest.approx(0.5)   # C's one spike over 2 steps
    assert cos.simulate(x, 2)[-1].item() == pytest.approx(0.0)   # the QANN-like count of an input totalling 0
    # shifts of −¾ and −1 both remove the offset spike; with a second image without one (x = 0: nobody fires) the
    # mean offset is ½, and of the two the shift nearest −½ is taken
    half = apply_cos(snn, torch.tensor([[1.0], [0.0]]), 2)
    assert offset_spikes(gm, names[1], torch.tensor([[1.0], [0.0]]), 2).tolist() == [0.5]
    assert [m.offset.tolist() for m in half.graph_module.modules() if isinstance(m, MultiBitNeuron)][1] == [-0.75]


def test_cos_calibrates_each_layer_and_keeps_the_network():
    qann = make_qann("digits")
    snn = ann2snn.convert(qann, T=4)
    x = torch.rand(32, *qann.input_shape, generator=torch.Generator().manual_seed(2))
    cos = apply_cos(snn, x, 2, iterations=2)
    mbs = [(n, m) for n, m in cos.graph_module.named_modules() if isinstance(m, MultiBitNeuron)]
    assert len(mbs) == 2 and all(m.offset.dim() == 3 for _, m in mbs) and mbs[1][1].calibrated
    plain = apply_cos(snn, torch.full((1, *qann.input_shape), -10.0), 2)  # nothing fires: offsets stay 0
    assert not any(m.calibrated for m in plain.graph_module.modules() if isinstance(m, MultiBitNeuron))
    name = mbs[-1][0]  # the calibrated layer has fewer offset spikes than before
    assert count_offset_spikes(cos.graph_module, name, x, 2) < count_offset_spikes(plain.graph_module, name, x, 2)
    assert all(type(m) is IFNeuron for _, m in snn.stateful())  # the input network is not changed
    with pytest.raises(Ann2SnnError, match="rate"):
        apply_cos(ann2snn.convert(qann, convention="exact"), x, 2)


def test_srp_masks_neurons_not_charged_after_the_pre_run():
    """Pre-run τ = 2: a neuron fed (1.0, −2.0) fires at step 1 and ends at v = −1.5 (not charged): masked, it
    stays silent after the reset although its input turns positive; one fed (0.8, 0.8) stays charged and fires."""
    net = seq(_linear([[1.0, 0.0], [0.0, 1.0]]), _unit(2), _linear([[1.0, 1.0]]), input_shape=(2,)).eval()
    srp = apply_srp(ann2snn.convert(net, T=4), 2)
    seq_in = torch.tensor([[[1.0, 0.8]], [[-2.0, 0.8]], [[1.0, 0.8]], [[1.0, 0.8]]])
    (name,) = [n for n, m in srp.graph_module.named_modules() if isinstance(m, MultiBitNeuron)]
    spikes = {}
    out = run_steps(srp.graph_module, seq_in, 4, encoding="sequence",
                    observer=lambda n, i, o: spikes.update({"s": o}) if n.target == name else None)
    assert spikes["s"][:, 0].tolist() == [[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    assert srp_readout(out, 2)[-1].item() == pytest.approx(1.0)  # mean over the 2 steps after the pre-run
    with pytest.raises(Ann2SnnError, match="pre-run"):
        srp_readout(out, 4)


# --- LIF read-out and STDP -------------------------------------------------------------------------------------


def test_lif_readout_without_leak_is_the_plain_readout():
    cur = torch.randn(9, 4, 3, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(LIFReadout(1.0, 0.7).scores(cur), readout(cur), rtol=1e-6, atol=1e-6)
    # with a leak, sub-threshold charge fades: a large threshold makes it a leaky integrator Σ γ^(t−τ) I_τ / t
    scores = LIFReadout(0.5, 1e9).scores(cur)
    expect = sum(0.5 ** (8 - t) * cur[t] for t in range(9)) / 9
    torch.testing.assert_close(scores[-1], expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(Ann2SnnError, match="leak"):
        LIFReadout(0.0)


def test_stdp_trains_the_readout_weights_without_labels():
    snn = ann2snn.convert(_tiny(), T=4)
    x = torch.rand(64, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    cfg = STDPConfig(a_plus=0.05, a_minus=0.05, T=4, readout=LIFReadout(0.8, 0.02))
    trained, stats = train_stdp(snn, x, cfg, generator=torch.Generator().manual_seed(0))
    _, w0 = readout_linear(snn.graph_module)
    _, w1 = readout_linear(trained.graph_module)
    assert stats["relative_change"] > 0 and not torch.equal(w0.weight, w1.weight)
    torch.testing.assert_close(w1.weight.norm(dim=1), w0.weight.norm(dim=1))  # rows keep their norm
    again, _ = train_stdp(snn, x, cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(readout_linear(again.graph_module)[1].weight, w1.weight)
    # no post spike, no pre-before-post pair: nothing to potentiate, depression only where post preceded pre
    quiet, st = train_stdp(snn, x, STDPConfig(a_plus=0.05, a_minus=0.0, readout=LIFReadout(1.0, 1e9)))
    assert st["relative_change"] == 0.0
    with pytest.raises(Ann2SnnError, match="nn.Linear"):
        train_stdp(ann2snn.convert(seq(conv(), q(4), nn.AvgPool2d(6), nn.Flatten())), x)


# --- the comparison, and a numeric regression on digits --------------------------------------------------------


@pytest.fixture(scope="module")
def digits_qann():
    """A tiny digits QANN trained for two epochs (a few seconds): real accuracy numbers to pin."""
    from ann2snn.data import load_digits
    from ann2snn.train import fit

    data = load_digits()
    torch.manual_seed(0)
    model = ann2snn.models.create("digits-cnn", levels=4, channels=4)
    fit(model, data, epochs=2, lr=1e-2, batch_size=64, seed=0)
    return model.eval(), data


def test_methods_against_the_plain_conversion_on_digits(digits_qann):
    model, data = digits_qann
    methods = [Method("rate", encoding="rate"), Method("D2", max_spikes=2), Method("D4", max_spikes=4),
               Method("cos", cos=True), Method("srp", srp_steps=2), Method("lif", readout=LIFReadout(1.0))]
    res = compare_methods(model, data, [1, 2, 4], methods, noise=NoiseSpec(levels=(0.0, 0.3), steps=(2, 5)),
                          limit=150, calib_samples=128)
    acc = {name: [r["snn_accuracy"] for r in m["per_T"]] for name, m in res["methods"].items()}
    assert list(acc) == ["plain", "rate", "D2", "D4", "cos", "srp", "lif"]
    q = res["qann_accuracy"]
    assert q > 0.8
    assert acc["plain"][2] >= q - 0.04                  # T = L: the plain conversion is close to the QANN
    assert acc["D2"][1] >= acc["plain"][1]              # multi-bit D = 2 at T = 2 ≥ plain at T = 2 ...
    assert acc["D4"][0] >= q - 0.04                     # ... and D = L reaches the QANN at T = 1
    assert acc["lif"] == acc["plain"]                   # γ = 1: the plain read-out
    assert acc["rate"][2] <= acc["plain"][2] + 0.02     # random input costs accuracy at few steps
    # energy: D = 4 at T = 1 spends about what plain spends at T = 4 (same spikes, one step); SRP counts its pre-run
    e = {name: [r["energy_ratio"] for r in m["per_T"]] for name, m in res["methods"].items()}
    sops = {name: [r["sops"] for r in m["per_T"]] for name, m in res["methods"].items()}
    assert sops["D4"][0] > 2 * sops["plain"][0] and res["methods"]["srp"]["per_T"][0]["steps_run"] == 3
    assert e["srp"][0] > e["plain"][0]
    noise = res["noise"]
    assert noise["steps"] == "2/5" and noise["qann_accuracy"][1] < noise["qann_accuracy"][0]
    assert len(noise["methods"]["plain"]) == 3 and len(noise["methods"]["plain"][0]) == 2
    # pinned on this seed (torch 2.x CPU): regressions beyond ±3 samples of 150 fail
    # pinned on this seed (CPU torch): correct samples of 150 at T = 1, 2, 4; a drift beyond ±3 samples fails
    got = {k: [round(a * 150) for a in v] for k, v in acc.items()}
    for name, pinned in PINNED.items():
        assert all(abs(g - p) <= 3 for g, p in zip(got[name], pinned)), (name, got[name], pinned)


#: measured once: the QANN has 131 of 150 right; plain reaches it at T = L = 4, D = 2 at T = 2, D = 4 at T = 1
PINNED = {"plain": [15, 44, 131], "D2": [44, 131, 136], "D4": [131, 135, 132]}


# --- ann2snn eval -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    qann = ann2snn.models.create("digits-cnn", levels=2, channels=4, init_threshold=1.0).eval()
    return ann2snn.save(qann, tmp_path_factory.mktemp("m") / "digits.pt")


def test_cli_eval_methods_json_table_and_noise_plot(model_file, tmp_path):
    import json

    from click.testing import CliRunner

    from ann2snn.cli.main import cli

    png = tmp_path / "noise.png"
    args = ["eval", str(model_file), "--T", "1,2", "--limit", "40", "--encoding", "rate", "--max-spikes", "2",
            "--srp", "1", "--lif-readout", "0.5", "--noise", "salt-pepper:0,0.3", "--noise-steps", "2/5",
            "--noise-plot", str(png), "--runs-dir", str(tmp_path / "runs")]
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == 0, r.output
    comp = json.loads(r.output)["methods_comparison"]
    assert list(comp["methods"]) == ["plain", "rate coding", "multi-bit D=2", "SRP τ=1", "LIF γ=0.5"]
    assert comp["noise"]["levels"] == [0.0, 0.3] and comp["noise"]["steps"] == "2/5"
    assert [r["steps_run"] for r in comp["methods"]["SRP τ=1"]["per_T"]] == [2, 3]
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(cli, [*args[:-4], "--no-record"])
    assert r.exit_code == 0, r.output
    assert "multi-bit D=2" in r.output and "SRP τ=1" in r.output and "ANN (QANN)" in r.output


@pytest.mark.parametrize("args, message", [
    (["--noise", "gauss:0.1"], "KIND:LEVELS"),
    (["--noise", "salt-pepper:0.1", "--noise-steps", "7/5"], "K/N"),
    (["--noise-steps", "2/5"], "needs --noise"),
    (["--max-spikes", "2", "--mode", "exact"], None),
])
def test_cli_eval_bad_method_options(model_file, capsys, args, message):
    from ann2snn.cli.main import main

    if message is None:  # the comparison runs under the rate convention whatever --mode says: accepted
        main(["eval", str(model_file), "--no-record", "--T", "1", "--limit", "8", "--json", *args])
        return
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(model_file), "--no-record", *args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
