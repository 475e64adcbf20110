"""Export a digits SNN to NIR (the Neuromorphic Intermediate Representation) and read it back.

    pip install 'ann2snn[nir]'
    python examples/nir_export.py [--epochs 8] [--out out/nir_export]

``ann2snn.export(snn, "X.nir", format="nir", nir=options)`` writes the NIR graph and a sidecar ``X.json``, after
running the graph with NIR semantics (nirtorch) against ann2snn's simulator. NIR's ``IF`` node resets to a fixed
value and has no initial membrane, so it cannot hold ann2snn's IF neuron (soft reset, membrane started at φ·θ)
exactly: the exact form is the *integrator* (``nir.I`` + ``nir.Threshold`` with a −θ feedback edge); the
``nir.IF`` form is written only with ``approximate=True`` and records what differs. Only rate-mode networks
without spiking max-pooling export (NIR has no input schedule, no −1 spikes, no spiking max); see docs/nir.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import ann2snn
from ann2snn.data import load_digits
from ann2snn.exporters import FORMATS
from ann2snn.train import fit


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--levels", type=int, default=4, help="QCFS levels L")
    p.add_argument("--out", type=Path, default=Path("out/nir_export"))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    if "nir" not in FORMATS:
        sys.exit("error: this ann2snn has no NIR export (format='nir'); update ann2snn")
    try:
        import nir
    except ImportError:
        sys.exit("error: NIR export needs the nir package: pip install 'ann2snn[nir]'")
    from ann2snn.exporters.nir import approximations, run_nir

    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits()
    x, y = data.x_test, data.y_test
    qann = ann2snn.models.create("digits-cnn", levels=a.levels, channels=8, init_threshold=2.0)
    fit(qann, data, epochs=a.epochs, lr=5e-3, seed=0)
    qann.eval()
    snn = ann2snn.convert(qann, T=a.levels)  # rate convention, average pooling: everything has a NIR node
    with torch.no_grad():
        ref = snn.simulate(x)  # [T, B, K]

    result = {"T": snn.T, "snn_accuracy": int((ref[-1].argmax(-1) == y).sum()) / len(y), "forms": {}}
    print(f"simulator: SNN {100 * result['snn_accuracy']:.2f}% at T = {snn.T}")
    for form, options in (("integrator", {"neuron": "integrator"}), ("if", {"neuron": "if", "approximate": True})):
        path = a.out / f"digits_{form}.snn.nir"
        res = ann2snn.export(snn, path, format="nir", nir=options, force=True)  # run against the simulator first
        graph = nir.read(str(path))  # back from the file, with the nir package alone
        kinds = sorted({type(n).__name__ for n in graph.nodes.values()})
        logits = run_nir(graph, x, T=snn.T)  # NIR semantics, via nirtorch
        acc = int((logits[-1].argmax(-1) == y).sum()) / len(y)
        diff = float((logits - ref).abs().max())
        notes = approximations(graph)
        print(f"{form:>10}: {path.name}: {len(graph.nodes)} nodes ({', '.join(kinds)}), {len(graph.edges)} edges; "
              f"read back and run: {100 * acc:.2f}%, max |NIR − simulator| logit {diff:.2g}")
        for note in notes:
            print(f"{'':>12}approximation: {note}")
        result["forms"][form] = {"file": str(path), "nodes": len(graph.nodes), "node_types": kinds,
                                 "accuracy": acc, "max_abs_vs_simulator": diff, "approximations": notes,
                                 "sidecar": str(res.sidecar)}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
