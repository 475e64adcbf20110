"""Save a zoo QANN with seeded random weights, BatchNorm statistics and thresholds as an ann2snn checkpoint, for
timing (``ann2snn bench``): time does not depend on training.

Usage: ``python bench/random_qann.py --arch resnet20 -o /tmp/resnet20.pt [--levels 4] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ann2snn  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, required=True)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    qann = ann2snn.models.randomize(ann2snn.models.create(a.arch, levels=a.levels, granularity="channel"),
                                    seed=a.seed)
    ann2snn.save(qann, a.output)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
