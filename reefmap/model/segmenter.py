"""The segmenter: the protocol the tile steps call, and its torch implementation.

``load_model`` loads a bundle's network (``reefmap.model.bundle``; any of the artifact types of
``reefmap.model.artifacts``), once per process, on the GPU when present. ``TorchSegmenter.predict_encoded`` is the
device path (raw values in, the two uint8 layers out, everything between on the model's device); ``predict`` returns
float32 probabilities for the numba kernels of the CPU path. torch is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reefmap.caching import LRUCache
from reefmap.checks import precision as check_precision
from reefmap.errors import DeviceOutOfMemory
from reefmap.options import get_option
from reefmap.model.artifacts import load_network
from reefmap.model.bundle import BundleMeta, read_bundle, write_bundle
from reefmap.store.format import PROB_NODATA


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns normalised pixels into class probabilities."""

    meta: BundleMeta

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 ``(batch, band, y, x)`` → float32 class probabilities ``(batch, class, y, x)``."""


# --- the torch side ------------------------------------------------------------------------------------------

class TorchSegmenter:
    """A bundle's network on a device, in ``inference_mode``.

    Inputs are zero-padded at the bottom/right to a multiple of ``2**levels`` and cropped back, so any block shape
    works. Batch invariance: every block goes through the network as a batch of one (``probabilities``), whatever
    else is in the call, so its bits depend only on its own pixels, the model, the device, ``precision`` and
    ``compile`` (a batched conv is not per-sample exact: on this CPU the ResNet-34 UNet's batch-1 and batch-8 outputs
    differ by 1.5e-8). Batching happens around the network: one host-to-device copy, the per-pixel normalisation,
    masking and encoding over the whole group (``predict_encoded``), which are elementwise or per-pixel reductions.

    ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (autocast of the forward pass; softmax in float32);
    ``compile``: the network through ``torch.compile`` (one compilation per block shape).
    """

    def __init__(self, meta: BundleMeta, device: str | None = None, threads: int | None = None,
                 precision: str = "fp32", compile: bool = False):
        import torch

        self.meta = meta
        self._device_arg = device
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.precision = check_precision(precision)
        self.compile = bool(compile)
        if threads:
            torch.set_num_threads(int(threads))
        net = load_network(Path(meta.path) / meta.artifact, meta.artifact_type, meta.architecture)
        net = net.to(self.device, memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the weights are in place before any thread's stream uses them
        self.net = torch.compile(net, dynamic=False) if self.compile else net
        self._torch = torch

    def __reduce__(self):  # travels to workers as its bundle path; loaded once there
        return (load_model, (self.meta.path, self._device_arg, None, self.precision, self.compile))

    def probabilities(self, x):
        """One block, a float32 tensor ``(1, band, y, x)`` on the device → its class probabilities (float32)."""
        torch = self._torch
        m = self.meta.size_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = self.net(x)
        return torch.softmax(logits.float(), dim=1)[:, :, :h, :w]

    def predict(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), self.out_of_memory(x.shape):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            return torch.cat([self.probabilities(t[i:i + 1]) for i in range(len(t))]).cpu().numpy()

    @contextlib.contextmanager
    def out_of_memory(self, shape):
        """Turns the device running out of memory for blocks ``shape`` (blocks, bands, y, x) into
        ``DeviceOutOfMemory``, naming the fix: every tile of the run would fail alike, so the run stops instead of
        recording each one FAILED."""
        try:
            yield
        except self._torch.cuda.OutOfMemoryError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
            raise DeviceOutOfMemory(
                f"the model {self.meta.name!r} ran out of memory on {self.device} for {shape[0]} block(s) of "
                f"{' x '.join(map(str, shape[1:]))} (bands x halo'd tile, {self.precision}): {first}. Map with a "
                "smaller --tile (e.g. 512: the halo stays the model's), --precision bf16, or fewer tiles per task "
                "(--batch 1); the finished tiles are kept and a re-run computes the rest") from None

    def predict_encoded(self, blocks, nodata: float | None, cores, timings: dict | None = None) -> list:
        """The device path ("uint8 in, uint8 out"): raw same-shaped blocks ``(band, y, x)`` (the source dtype; a list
        or a stacked array) → per block ``(reef_probability u8, classification u8)`` of its core ``(row slice, col
        slice)``.

        The host sends the raw values and receives two bytes per core pixel: normalisation and the nodata mask
        (``device_normalize``), the network, softmax and the encoding (``device_encode``) run on ``self.device``,
        with the same arithmetic as the numba kernels of the CPU path (byte-identical results). On CUDA the blocks
        are copied once, into one pinned host buffer, and everything runs on this thread's own CUDA stream
        (``stream_of``): several threads may call this at once (the model steps of a GPU worker), each waiting only
        for its own work, so one call's host work overlaps another's kernels. ``nodata``: the input's nodata value,
        None for none. ``timings`` (optional) gets the seconds of each step added: h2d, normalize, model, encode,
        d2h (each waits for its work on the stream)."""
        torch = self._torch
        cuda = self.device.type == "cuda"
        stream = stream_of(self.device)
        clock = StepClock(timings, stream.synchronize if cuda else None)
        meta = self.meta
        shape = (len(blocks), *blocks[0].shape)
        with torch.inference_mode(), self.out_of_memory(shape), \
                (torch.cuda.stream(stream) if cuda else contextlib.nullcontext()):
            raw = to_device(blocks, self.device)
            clock.lap("h2d")
            x, valid = device_normalize(raw, meta.kernel_scaling(), nodata, meta.valid_range)
            clock.lap("normalize")
            probs = torch.cat([self.probabilities(x[i:i + 1]) for i in range(len(x))])
            clock.lap("model")
            prob, cls = device_encode(probs, valid, meta.reef_channels, meta.class_values)
            planes = torch.stack([prob, cls], 1)
            cropped = [planes[i, :, rs, cs] for i, (rs, cs) in enumerate(cores)]
            clock.lap("encode")
            out = []
            for c in cropped:
                h = torch.empty(c.shape, dtype=torch.uint8, pin_memory=cuda)
                out.append(h.copy_(c, non_blocking=cuda))
            clock.lap("d2h")  # waits for the stream on CUDA: the pinned buffers are complete
        return [(h[0].numpy(), h[1].numpy()) for h in out]


#: each thread's CUDA stream per device (``stream_of``)
_STREAMS = threading.local()


def stream_of(device):
    """This thread's own CUDA stream on ``device`` (made on first use, kept for the thread's life); None off CUDA."""
    if device.type != "cuda":
        return None
    import torch

    streams = _STREAMS.__dict__.setdefault("by_device", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)
    return streams[device]


def to_device(blocks, device):
    """Same-shaped raw host blocks → one ``(batch, band, y, x)`` tensor on ``device`` holding their values. To CUDA:
    copied once, straight into one pinned host buffer, then sent without blocking (on the current stream); elsewhere:
    one stacked array, shared with torch. uint16/uint32 values (torch supports these types only in part) travel as the
    same bytes in int16/int32 and are widened on the device, exactly."""
    import torch

    first = blocks[0]
    signed, wide, mask = _UNSIGNED.get(np.dtype(first.dtype), (None, None, None))
    if device.type != "cuda":
        host = np.ascontiguousarray(np.stack(blocks) if isinstance(blocks, list) else blocks)
        t = torch.from_numpy(host if signed is None else host.view(signed))
    else:
        dtype = torch.from_numpy(np.empty(0, signed or first.dtype)).dtype
        t = torch.empty((len(blocks), *first.shape), dtype=dtype, pin_memory=True)
        view = t.numpy()
        for i, b in enumerate(blocks):
            view[i] = b if signed is None else np.asarray(b).view(signed)
        t = t.to(device, non_blocking=True)
    return t if signed is None else t.to(getattr(torch, wide)) & mask


#: unsigned types torch supports only in part → (the signed type of their bytes, the type that holds them, the mask)
_UNSIGNED = {np.dtype(np.uint16): (np.int16, "int32", 0xFFFF), np.dtype(np.uint32): (np.int32, "int64", 0xFFFFFFFF)}


class StepClock:
    """Adds the seconds since the last lap to ``timings[key]`` (None: no timings kept; key None: a lap timed
    elsewhere), calling ``sync`` first when given (a CUDA device: its queued work is part of the step)."""

    def __init__(self, timings: dict | None, sync=None):
        self.timings, self.sync, self.t = timings, sync, time.perf_counter()

    def lap(self, key: str | None) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        if self.timings is not None and key is not None:
            self.timings[key] = self.timings.get(key, 0.0) + now - self.t
        self.t = now


def device_normalize(raw, scaling, nodata: float | None, valid_range):
    """``kernels.normalize`` in torch, on ``raw``'s device: raw ``(batch, band, y, x)`` (any dtype) → (float32
    ``clip((x - a) / b, lo, hi)`` per band, 0 where invalid; bool validity ``(batch, y, x)``).

    The same rule and arithmetic as the kernel: in float64, rounded once to float32. A pixel is invalid when every
    band equals ``nodata`` (None: no nodata value), any band is NaN, or any other band lies outside ``valid_range``."""
    import torch

    v = raw.to(torch.float64)
    s = torch.as_tensor(scaling, dtype=torch.float64, device=raw.device).reshape(1, -1, 4, 1, 1)
    lo, hi = float(valid_range[0]), float(valid_range[1])
    outside = (v < lo) | (v > hi)
    invalid = torch.isnan(v).any(1)
    if nodata is not None:
        is_nodata = v == nodata
        invalid |= is_nodata.all(1) | (outside & ~is_nodata).any(1)
    else:
        invalid |= outside.any(1)
    x = torch.clamp((v - s[:, :, 0]) / s[:, :, 1], s[:, :, 2], s[:, :, 3])
    valid = ~invalid
    return torch.where(valid[:, None], x, 0.0).to(torch.float32), valid


def device_encode(probs, valid, reef_channels, codes):
    """``kernels.encode`` in torch: class probabilities ``(batch, K, y, x)`` float32 and validity ``(batch, y, x)``
    → (reef_probability u8, classification u8), each ``(batch, y, x)``.

    classification = ``codes[argmax]`` (the first maximum), 0 where invalid; reef_probability: the ``reef_channels``'
    probabilities summed in float32 in their order, clipped to [0, 1], then ``floor(p * 250 + 0.5)`` in float64
    (exact for a float32 p, as in the kernel), 255 where invalid."""
    import torch

    codes = torch.as_tensor(np.asarray(codes, np.uint8), device=probs.device)
    cls = torch.where(valid, codes[probs.argmax(1)], 0)
    p = torch.zeros_like(probs[:, 0])
    for k in reef_channels:
        p = p + probs[:, k]
    p = torch.floor(p.clamp(0.0, 1.0).to(torch.float64) * 250.0 + 0.5).to(torch.uint8)
    return torch.where(valid, p, PROB_NODATA), cls.to(torch.uint8)


#: loaded segmenters by (content hash, device, precision, compile): one per worker in practice
_MODELS: "LRUCache[TorchSegmenter]" = LRUCache("models", 4)


def load_model(bundle: str | os.PathLike | BundleMeta | None = None, device: str | None = None,
               threads: int | None = None, precision: str = "fp32", compile: bool = False) -> TorchSegmenter:
    """The bundle's segmenter, loaded once per process (and device, precision, compile) and reused for every tile."""
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - torch is a core dependency
        raise ImportError("reefmap inference needs PyTorch: pip install torch==2.13.0") from None
    meta = bundle if isinstance(bundle, BundleMeta) else read_bundle(bundle)
    key = (meta.sha256, device or "auto", check_precision(precision), bool(compile))
    return _MODELS.get_or_create(key, lambda: TorchSegmenter(meta, device=device, threads=threads or _default_threads(),
                                                             precision=precision, compile=compile))


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
