"""``reefmap train CONFIG.yaml [--out DIR] [--nproc N]``: train a model bundle from a training config."""

from __future__ import annotations


def cmd_train(a) -> int:
    from reefmap.model.training import train

    meta = train(a.config, a.out, nproc=a.nproc)
    v = meta.training.get("validation", {})
    print(f"wrote bundle {meta.path} ({meta.name}, sha256 {meta.sha256[:12]}); validation reef F1 "
          f"{'undefined' if v.get('reef_f1') is None else format(v['reef_f1'], '.3f')} (best epoch {v.get('best_epoch')})")
    return 0


def add_commands(sub) -> None:
    t = sub.add_parser("train", help="train a model bundle from a training config (resumes an interrupted run)")
    t.add_argument("config", help="training config YAML (data, validation, sampling, augmentation, model, optimisation)")
    t.add_argument("--out", help="output folder: checkpoint, training log, curves, bundle/ (default: the config's out)")
    t.add_argument("--nproc", type=int, default=1,
                   help="train data-parallel in N processes (DDP; gloo on the CPU, one GPU each with CUDA)")
    t.set_defaults(fn=cmd_train)
