"""Reproduce the shipped demo bundle (reefmap/model/bundles/demo): a tiny UNet trained on the synthetic reef world.

    .venv/bin/python pipelines/train_demo.py [--out reefmap/model/bundles/demo] [--steps N] [--seed S]

The result is trained on synthetic data only: it demonstrates the pipeline, it is not a validated reef map.
"""

import argparse

from reefmap.model.bundle import DEMO_BUNDLE
from reefmap.model.train import TrainConfig, train_bundle

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEMO_BUNDLE))
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    a = ap.parse_args()
    meta = train_bundle(a.out, TrainConfig(steps=a.steps, seed=a.seed))
    print(f"wrote {meta.path}: {meta.name}, sha256 {meta.sha256[:12]}, training {meta.training}")
