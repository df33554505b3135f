"""Train the demo model (a tiny UNet on the synthetic reef world) from pipelines/configs/train-demo.yaml.

    .venv/bin/python pipelines/train_demo.py [--config pipelines/configs/train-demo.yaml] [--out out/train-demo] [--nproc N]

Writes OUT/bundle (STAC MLM), OUT/train-log.json|csv and OUT/curves.png; re-running resumes. The result is trained
on synthetic data only: it demonstrates the pipeline, it is not a validated reef map. (The shipped
reefmap/model/bundles/demo is replaced only deliberately, by copying OUT/bundle there.)
"""

import argparse
from pathlib import Path

from reefmap.model.training import train

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent / "configs" / "train-demo.yaml"))
    ap.add_argument("--out", default="out/train-demo")
    ap.add_argument("--nproc", type=int, default=1)
    a = ap.parse_args()
    meta = train(a.config, a.out, nproc=a.nproc)
    print(f"wrote {meta.path}: {meta.name}, sha256 {meta.sha256[:12]}, validation {meta.training['validation']['reef_f1']}")
