"""Bundle artifact types and measured receptive radii: the demo tiny_unet and the ResNet-34 UNet.

    .venv/bin/python benchmarks/bench_bundle.py [--threads 2] [--rounds 5] [--size 256]

For each model: bare forward Mpx/s (CPU, ``--threads`` torch threads, inference mode, channels-last as
``TorchSegmenter`` runs it) of the state-dict model, of its ``torch.export`` ``.pt2`` and of its TorchScript
export, all loaded back from files by ``reefmap.model.artifacts.load_network``; the variants are timed in
interleaved rounds so that a shared machine's load hits them alike, and the best round of each is reported (the
least disturbed one; the median is printed beside it). Then the receptive
radius measured on random backgrounds (``reefmap.model.receptive``) against the analytic one of the architecture.
The demo model has its trained weights; the ResNet-34 UNet (24.4 M parameters) has seeded default-initialised ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def forward_mpx(nets: dict, bands: int, size: int, rounds: int) -> dict:
    import torch

    x = torch.randn(1, bands, size, size).contiguous(memory_format=torch.channels_last)
    times = {k: [] for k in nets}
    outs = {}
    with torch.inference_mode():
        for k, net in nets.items():
            outs[k] = net(x)  # warm-up
        for _ in range(rounds):
            for k, net in nets.items():
                t = time.perf_counter()
                net(x)
                times[k].append(time.perf_counter() - t)
    ref = next(iter(outs.values()))
    mpx = size * size / 1e6
    return {k: (mpx / min(v), mpx / statistics.median(v), float((outs[k] - ref).abs().max())) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--size", type=int, default=256, help="input side in pixels (a multiple of 32)")
    a = ap.parse_args()

    import torch

    from reefmap.model.architectures import analytic_receptive_radius, build_network, size_multiple
    from reefmap.model.artifacts import export_program, export_torchscript, load_network, save_state_dict
    from reefmap.model.bundle import read_bundle
    from reefmap.model.receptive import measure_receptive_radius

    torch.set_num_threads(a.threads)
    demo = read_bundle(None)
    torch.manual_seed(0)
    models = {
        "demo tiny_unet": (demo.architecture, load_network(Path(demo.path) / demo.artifact, "torch.save", demo.architecture)),
        "resnet34_unet": ({"name": "resnet34_unet", "in_channels": 3, "classes": 5}, None),
    }
    print(f"torch {torch.__version__}, {a.threads} threads, input 1x3x{a.size}x{a.size}, best of {a.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, net) in models.items():
            net = (net or build_network(arch)).eval()
            t0 = time.perf_counter()
            files = {"torch.save": save_state_dict(net, Path(tmp) / f"{arch['name']}.pt"),
                     "torch.export.save": export_program(net, 3, Path(tmp) / f"{arch['name']}.pt2"),
                     "torch.jit.save": export_torchscript(net, 3, Path(tmp) / f"{arch['name']}.ts")}
            t_export = time.perf_counter() - t0
            nets = {k: load_network(f, k, arch).to(memory_format=torch.channels_last) for k, f in files.items()}
            res = forward_mpx(nets, 3, a.size, a.rounds)
            base = res["torch.save"][0]
            params = sum(p.numel() for p in net.parameters())
            print(f"\n{name} ({params / 1e6:.2f} M parameters; exports written in {t_export:.1f}s)")
            for k, (mpx, median, diff) in res.items():
                print(f"  {k:18s} {mpx:7.3f} Mpx/s  {mpx / base:6.1%} of the state-dict model  (median {median:.3f}; "
                      f"max |output diff| {diff:.1e})")
            t0 = time.perf_counter()
            measured = measure_receptive_radius(nets["torch.export.save"], 3, size_multiple(arch))
            print(f"  receptive radius: measured {measured} px (on the .pt2, {time.perf_counter() - t0:.1f}s), "
                  f"analytic {analytic_receptive_radius(arch)} px")


if __name__ == "__main__":
    main()
