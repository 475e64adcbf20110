"""Classify images with an exported ann2snn SNN using only numpy and onnxruntime: no ann2snn, no torch.

    python examples/onnxruntime_only.py out/digits.snn.json --images x.npy --labels y.npy --preprocess digits

The first argument is the sidecar JSON that ``ann2snn convert`` / ``ann2snn.export`` write beside the ONNX files:
every file it lists is run, the unrolled graph in one call per batch and the stateful graph driven step by step
with its states fed back. It may also be one ONNX file: what the sidecar says is then read from the file's own
``metadata_props``. ``--images`` is a ``.npy`` array ``[N, C, H, W]`` (or ``[N, H, W]``, or flat ``[N, C·H·W]``:
it is reshaped to the input shape the file records); ``--labels`` an ``[N]`` array of class indices.

**Preprocessing.** The normalization the model was trained with is not recorded in the exported files; name it:
``--preprocess digits`` (scikit-learn's raw digits pixels 0..16, divided by 16, as ``ann2snn.data.load_digits``),
``mnist`` (uint8 pixels 0..255: ``(x/255 − 0.1307)/0.3081``, as ``ann2snn.data.load_mnist``) or ``none`` (the
array already holds what the model takes).

The names below are the ONNX contract (docs/onnx-contract.md, ``ann2snn.exporters.contract``); they are spelled
out because this script must not import ann2snn, and a test checks that they match.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

# graph inputs and outputs
INPUT = "input"
LOGITS = "logits"
LOGITS_PER_STEP = "logits_per_step"
LOGITS_T = "logits_t"
# metadata_props keys
META_FORMAT = "ann2snn.format"
META_T = "ann2snn.T"
META_ENCODING = "ann2snn.encoding"
META_INPUT_SHAPE = "ann2snn.input_shape"
META_STATES = "ann2snn.states"
META_CONVENTION = "ann2snn.convention"
META_SCHEDULE_LENGTH = "ann2snn.schedule_length"
# the sidecar
SIDECAR_FORMAT = "ann2snn.onnx-sidecar"
SIDECAR_VERSION = 2
FORMATS = ("unrolled", "stateful")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
PREPROCESS = {
    "none": lambda x: x,
    "digits": lambda x: x / 16.0,
    "mnist": lambda x: (x / 255.0 - MNIST_MEAN) / MNIST_STD,
}


def fail(message: str):
    raise SystemExit(f"error: {message}")


def models_from_sidecar(path: Path) -> list[dict]:
    """One description per ONNX file the sidecar lists: file, format, T, convention, L, input shape, states."""
    side = json.loads(path.read_text())
    if side.get("format") != SIDECAR_FORMAT or not 1 <= int(side.get("version", 0)) <= SIDECAR_VERSION:
        fail(f"{path} is not an ann2snn sidecar of version 1..{SIDECAR_VERSION}; re-export the model")
    shape = [d for d in side["input"]["shape"] if d not in ("T", "batch")]  # ["T"?, "batch", C, H, W]
    common = {"T": int(side["T"]), "encoding": side["encoding"], "input_shape": shape,
              "convention": side.get("convention", "rate"),  # version 1 files are rate networks
              "schedule_length": side.get("schedule_length")}
    out = []
    for fmt in FORMATS:
        if fmt in side["files"]:
            states = side["stateful"]["states"] if fmt == "stateful" else []
            out.append({**common, "file": path.parent / side["files"][fmt], "format": fmt, "states": states})
    return out


def model_from_onnx(path: Path) -> dict:
    """The same description, read from the file's metadata_props."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    if props.get(META_FORMAT) not in FORMATS:
        fail(f"{path} is not an ONNX file exported by ann2snn (no {META_FORMAT} in its metadata)")
    return {"file": path, "format": props[META_FORMAT], "T": int(props[META_T]),
            "encoding": props.get(META_ENCODING, "direct"), "input_shape": json.loads(props[META_INPUT_SHAPE]),
            "convention": props.get(META_CONVENTION, "rate"),
            "schedule_length": json.loads(props.get(META_SCHEDULE_LENGTH, "null")),
            "states": json.loads(props.get(META_STATES, "[]"))}


def readout_counts(T: int, convention: str, length: int | None) -> np.ndarray:
    """N(t) for t = 1..T: t (rate) or min(t, L) (exact); logits after t steps = Σ logits_t / N(t)."""
    t = np.arange(1, T + 1, dtype=np.float32)
    return np.minimum(t, length) if convention == "exact" else t


def initial_states(states: list[dict], batch: int) -> dict[str, np.ndarray]:
    """Every state's initial value for ``batch`` samples: the per-sample ``init`` (fill or values), batch first."""
    out = {}
    for s in states:
        shape = (batch, *s["shape"])
        init = s["init"]
        if "fill" in init:
            out[s["input"]] = np.full(shape, init["fill"], dtype=np.float32)
        else:
            out[s["input"]] = np.ascontiguousarray(np.broadcast_to(np.asarray(init["values"], np.float32), shape))
    return out


def run_unrolled(session, x: np.ndarray, model: dict) -> np.ndarray:
    """Logits after t = 1..T steps, ``[T, B, K]``: one call (the graph holds all T steps)."""
    return session.run([LOGITS_PER_STEP], {INPUT: x})[0]


def run_stateful(session, x: np.ndarray, model: dict) -> np.ndarray:
    """The same from the one-step graph: feed the image and the states, keep logits_t, feed the states back.

    Under the exact convention the graph counts its steps itself (state ``state.schedule.step``) and stops its
    input and constants after step L; the caller feeds the image at every step all the same."""
    states = model["states"]
    state = initial_states(states, len(x))
    names = [LOGITS_T] + [s["output"] for s in states]
    total, sums = 0.0, []
    for _ in range(model["T"]):
        logits_t, *new = session.run(names, {INPUT: x, **state})
        state = {s["input"]: v for s, v in zip(states, new)}
        total = total + logits_t
        sums.append(total)
    n = readout_counts(model["T"], model["convention"], model["schedule_length"])
    return np.stack(sums) / n[:, None, None]


def classify(model: dict, images: np.ndarray, labels: np.ndarray, *, batch: int, providers: list[str]) -> dict:
    """Run one file on every image; accuracy after T steps and at every t = 1..T."""
    if model["encoding"] != "direct":
        fail(f"{model['file']} takes pre-encoded [T, B, ...] input (encoding {model['encoding']!r}); this example "
             "classifies images with the default direct encoding (export without --encoding sequence)")
    session = ort.InferenceSession(str(model["file"]), providers=providers)
    run = run_unrolled if model["format"] == "unrolled" else run_stateful
    preds = np.concatenate([run(session, images[i:i + batch], model).argmax(-1)
                            for i in range(0, len(images), batch)], axis=1)  # [T, N]
    correct = (preds == labels[None]).sum(1)
    return {"file": str(model["file"]), "format": model["format"], "convention": model["convention"],
            "T": model["T"], "images": len(labels), "correct": int(correct[-1]),
            "accuracy": float(correct[-1] / len(labels)), "accuracy_per_t": (correct / len(labels)).tolist(),
            "predictions": preds[-1].tolist()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="the sidecar X.json (runs every file it lists) or one ONNX file")
    p.add_argument("--images", type=Path, required=True, help=".npy array of images [N, C, H, W]")
    p.add_argument("--labels", type=Path, required=True, help=".npy array of class indices [N]")
    p.add_argument("--preprocess", choices=sorted(PREPROCESS), required=True,
                   help="the normalization the model was trained with (the file does not record it)")
    p.add_argument("--T", type=int, default=None, help="steps to run the stateful graph (default: the file's T)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--cuda", action="store_true", help="try onnxruntime's CUDA provider first")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    if not a.model.is_file():
        fail(f"{a.model} does not exist")
    models = models_from_sidecar(a.model) if a.model.suffix == ".json" else [model_from_onnx(a.model)]
    labels = np.load(a.labels).astype(np.int64).reshape(-1)
    raw = np.load(a.images).astype(np.float32)
    providers = (["CUDAExecutionProvider"] if a.cuda else []) + ["CPUExecutionProvider"]
    results = {}
    for model in models:
        shape = tuple(int(d) for d in model["input_shape"])
        if raw.size != len(labels) * int(np.prod(shape)):
            fail(f"{a.images} holds {raw.shape} but the model takes {len(labels)} images of shape {shape}")
        images = np.ascontiguousarray(PREPROCESS[a.preprocess](raw).reshape(len(labels), *shape), dtype=np.float32)
        if a.T is not None and model["format"] == "stateful":
            model = {**model, "T": a.T}
        r = classify(model, images, labels, batch=a.batch, providers=providers)
        results[model["format"]] = r
        curve = " ".join(f"{100 * v:.2f}" for v in r["accuracy_per_t"])
        print(f"{r['format']:>8} {Path(r['file']).name} ({r['convention']}, T = {r['T']}): accuracy "
              f"{100 * r['accuracy']:.2f}% ({r['correct']}/{r['images']}); at t = 1..{r['T']}: {curve}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
