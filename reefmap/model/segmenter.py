"""The segmenter: the protocol the tile steps call, and its torch implementation.

``load_model`` loads a bundle's network (``reefmap.model.bundle``; any of the artifact types of
``reefmap.model.artifacts``), once per process, on the GPU when present. torch is imported only inside functions.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reefmap.caching import LRUCache
from reefmap.options import get_option
from reefmap.model.artifacts import load_network
from reefmap.model.bundle import BundleMeta, read_bundle, write_bundle


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns normalised pixels into class probabilities."""

    meta: BundleMeta

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 ``(batch, band, y, x)`` → float32 class probabilities ``(batch, class, y, x)``."""


# --- the torch side ------------------------------------------------------------------------------------------

class TorchSegmenter:
    """A bundle's network on a device, predicting whole batches in ``inference_mode``.

    Inputs are zero-padded at the bottom/right to a multiple of ``2**levels`` and cropped back, so any
    block shape works and a block's result depends only on its own pixels.
    """

    def __init__(self, meta: BundleMeta, device: str | None = None, threads: int | None = None):
        import torch

        self.meta = meta
        self._device_arg = device
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if threads:
            torch.set_num_threads(int(threads))
        net = load_network(Path(meta.path) / meta.artifact, meta.artifact_type, meta.architecture)
        self.net = net.to(self.device, memory_format=torch.channels_last)
        self._torch = torch

    def __reduce__(self):  # travels to workers as its bundle path; loaded once there
        return (load_model, (self.meta.path, self._device_arg))

    def predict(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        m = self.meta.size_multiple
        b, c, h, w = x.shape
        ph, pw = (-h) % m, (-w) % m
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            if ph or pw:
                t = torch.nn.functional.pad(t, (0, pw, 0, ph))
            t = t.contiguous(memory_format=torch.channels_last)
            p = torch.softmax(self.net(t), dim=1)[:, :, :h, :w]
            return p.float().cpu().numpy()


#: loaded segmenters by (content hash, device): one per worker in practice, a few when a notebook tries models
_MODELS: "LRUCache[TorchSegmenter]" = LRUCache("models", 4)


def load_model(bundle: str | os.PathLike | BundleMeta | None = None, device: str | None = None,
               threads: int | None = None) -> TorchSegmenter:
    """The bundle's segmenter, loaded once per process (and device) and reused for every tile."""
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - torch is a core dependency
        raise ImportError("reefmap inference needs PyTorch: pip install torch==2.13.0") from None
    meta = bundle if isinstance(bundle, BundleMeta) else read_bundle(bundle)
    key = (meta.sha256, device or "auto")
    return _MODELS.get_or_create(key, lambda: TorchSegmenter(meta, device=device, threads=threads or _default_threads()))


def _default_threads() -> int | None:
    """Inference threads: ``REEFMAP_INFERENCE_THREADS``, else the dask worker's thread count, else torch's default."""
    env = get_option("inference_threads")
    if env:
        return int(env)
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return None


def save_bundle(path: str | os.PathLike, net, meta: dict[str, Any]) -> BundleMeta:
    """Write ``net``'s weights and ``meta`` as a ``reefmap-bundle/1`` directory; returns the metadata as read back."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    return write_bundle(path, buf.getvalue(), meta)
