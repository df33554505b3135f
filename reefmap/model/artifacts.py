"""Model artifacts in and out of torch: the three kinds a bundle can hold, loaded as a callable network.

- ``torch.export.save`` (``.pt2``, an ExportedProgram with dynamic batch, height and width): any architecture,
  no Python class needed to load it; the recommended, portable path (``export_program`` writes one);
- ``torch.jit.save`` (TorchScript; ``export_torchscript`` traces one);
- ``torch.save`` of a ``state_dict`` of a built-in architecture (``reefmap.model.architectures``).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from reefmap.errors import ModelError
from reefmap.model.architectures import build_network


@contextmanager
def _quiet(logger: str):
    """torch.export.load logs a traceback as warnings before it raises; the error we raise says it in one line."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def load_network(path: str | os.PathLike, artifact_type: str, architecture: dict | None = None):
    """The network in an artifact file, on the CPU in eval mode (an exported program's module is traced in
    eval mode already)."""
    import torch

    path = Path(path)
    try:
        if artifact_type == "torch.export.save":
            with _quiet("torch.export"):
                return torch.export.load(str(path)).module()
        if artifact_type == "torch.jit.save":
            return torch.jit.load(str(path), map_location="cpu").eval()
        if artifact_type == "torch.save":
            if not architecture or architecture.get("name") in (None, "unknown"):
                raise ModelError(f"model artifact {str(path)!r} is a torch.save state_dict: name its built-in "
                                 "architecture (architecture: {name: tiny_unet|resnet34_unet, ...}) in the spec")
            net = build_network(architecture)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval()
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file it cannot load
        what = f"a state_dict of {architecture}" if artifact_type == "torch.save" else artifact_type
        msg = " ".join(str(e).split())[:300]
        raise ModelError(f"model artifact {str(path)!r} does not load as {what} with torch {torch.__version__} "
                         f"({type(e).__name__}: {msg}); re-export it with this torch version or fix the spec") from None
    raise ModelError(f"unknown artifact type {artifact_type!r}; reefmap loads torch.export.save, torch.jit.save, torch.save")


def export_program(net, bands: int, path: str | os.PathLike, size: int = 64) -> Path:
    """Export ``net`` (eval mode) with ``torch.export`` for any batch, height and width (sizes the network needs,
    e.g. multiples of its down-sampling, are inferred), and save it as ``.pt2``."""
    import torch
    from torch.export import Dim

    x = torch.randn(2, bands, size, size)  # a dynamic batch needs an example batch of at least 2
    ep = torch.export.export(net.eval(), (x,), dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    torch.export.save(ep, str(path))
    return Path(path)


def export_torchscript(net, bands: int, path: str | os.PathLike, size: int = 64) -> Path:
    """Trace ``net`` (eval mode) to TorchScript and save it."""
    import torch

    with torch.no_grad():
        ts = torch.jit.trace(net.eval(), torch.randn(2, bands, size, size))
    torch.jit.save(ts, str(path))
    return Path(path)


def save_state_dict(net, path: str | os.PathLike) -> Path:
    """Save ``net``'s weights (on the CPU) with ``torch.save``."""
    import torch

    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, str(path))
    return Path(path)
