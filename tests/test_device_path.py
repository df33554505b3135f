"""The device path ("uint8 in, uint8 out", issue 11 items 2-3) run on CPU tensors, the device as a parameter: the
same bytes as the numba kernels, batch invariance, and the model's precision as a run option kept in the map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import zarr

from reefmap.classes import CLASS_NAMES
from reefmap.compute import kernels
from reefmap.compute.tiles import predict_blocks, uses_device_path
from reefmap.errors import InvalidParameter, StoreMismatch
from reefmap.execute.runner import RunOptions, execute, prepare
from reefmap.store.format import TileState
from reefmap.geometry.grid import Window
from reefmap.model.segmenter import device_encode, device_normalize, load_model
from conftest import torch_devices

VALID = (0.0, 250.0)  # uint8 values 251-255 are out of range too
SCALING = ((100.0, 40.0, -np.inf, np.inf), (0.0, 3.0, -np.inf, np.inf), (0.0, 1.0, 20.0, 200.0))  # z-score, scale, clip


def raw_block(rng, dtype, shape=(3, 40, 56)):
    """Random band values with nodata pixels (all bands 0), a single-band 0, out-of-range values (and NaN for float)."""
    hi = 255 if dtype == np.uint8 else 400
    b = rng.integers(0, hi + 1, shape).astype(dtype)
    b[:, :5] = 0  # nodata rows
    b[1, 8, :20] = 0  # one band equal to nodata: still valid
    if dtype != np.uint8:
        b[2, 12, 3:9] = 300  # outside VALID
        b[0, 14, 10:20] = -1 if dtype == np.float32 else 260
    if dtype == np.float32:
        b[1, 20, ::3] = np.nan
    return b


@pytest.mark.parametrize("device", torch_devices())
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("nodata", [0, None])
def test_device_normalize_gives_the_kernels_bytes(dtype, nodata, device):
    rng = np.random.default_rng(4)
    blocks = np.stack([raw_block(rng, dtype) for _ in range(2)])
    x, valid = device_normalize(torch.from_numpy(blocks).to(device), SCALING, nodata, VALID)
    x, valid = x.cpu(), valid.cpu()
    assert x.dtype == torch.float32 and valid.dtype == torch.bool
    for i in range(2):
        want_x, want_valid = kernels.normalize(blocks[i], SCALING, nodata, VALID)
        assert np.array_equal(valid[i].numpy().astype(np.uint8), want_valid)
        assert x[i].numpy().tobytes() == want_x.tobytes()
        assert 0 < want_valid.sum() < want_valid.size  # both kinds of pixel are there
    assert valid[0, :5].any() == (nodata is None)  # all bands 0: nodata, or valid values when there is no nodata


def boundary_probs():
    """float32 probabilities whose reef sum (two channels) lies within a few ulps of a rounding boundary
    (k + 0.5) / 250: the float32 and float64 sums round to different codes there."""
    rng = np.random.default_rng(1)
    out = []
    while len(out) < 40:
        t = (2 * int(rng.integers(1, 250)) - 1) / 500
        a = np.float32(rng.random() * t)
        b = np.float32(t - float(a))
        for step in range(-3, 4):
            bb = b
            for _ in range(abs(step)):
                bb = np.nextafter(bb, np.float32(np.sign(step)), dtype=np.float32)
            out.append((a, bb, np.float32(1) - a - bb))
    return np.array(out, np.float32).T.reshape(3, 1, -1)


@pytest.mark.parametrize("device", torch_devices())
def test_device_encode_gives_the_kernels_bytes_at_rounding_boundaries_and_ties(device):
    rng = np.random.default_rng(2)
    probs = rng.random((5, 30, 40)).astype(np.float32)
    probs /= probs.sum(0)
    probs[:, 0, :10] = 0.2  # five-way ties: the first channel wins
    probs[3, 1, :10] = probs[1, 1, :10]  # a tie between channels 1 and 3 (when they are the maximum)
    valid = (rng.random((30, 40)) > 0.2).astype(np.uint8)
    codes = (1, 2, 3, 4, 5)
    for reef in ((2,), (1, 3), ()):
        want = kernels.encode(probs, valid, reef, codes)
        got = device_encode(torch.from_numpy(probs)[None].to(device), torch.from_numpy(valid.astype(bool))[None].to(device),
                            reef, codes)
        assert [g[0].cpu().numpy().tobytes() for g in got] == [w.tobytes() for w in want]
    edge = boundary_probs()
    ones = np.ones(edge.shape[1:], np.uint8)
    want = kernels.encode(edge, ones, (0, 1), (1, 2, 3))
    got = device_encode(torch.from_numpy(edge)[None].to(device), torch.ones((1, *edge.shape[1:]), dtype=torch.bool,
                        device=device), (0, 1), (1, 2, 3))
    assert got[0][0].cpu().numpy().tobytes() == want[0].tobytes()
    as64 = np.floor((edge[0].astype(np.float64) + edge[1]) * 250 + 0.5)
    assert (as64 != want[0]).any()  # the cases do tell a float32 sum from a float64 one


@pytest.mark.parametrize("device", torch_devices())
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predict_blocks_on_the_device_path_equals_the_numba_path(random_bundle, memory_mosaic, precision, device):
    """The same network on the same device, with the numba kernels on the host around it or everything on the
    device: the same bytes."""
    _, arr = memory_mosaic
    model = load_model(random_bundle, device=device, precision=precision)
    assert uses_device_path(model) == (device == "cuda") and uses_device_path(model, True)
    blocks = [np.ascontiguousarray(arr[:, r:r + 200, c:c + 264]) for r, c in ((250, 250), (0, 0), (400, 600), (100, 500))]
    blocks[2][1, 50:60, 40:90] = 0  # one band at nodata: valid; all bands: nodata
    blocks[3][:, 30:80, 20:70] = 0
    cores = [Window(32, 168, 32, 232), Window(0, 168, 0, 232), Window(32, 200, 32, 264), None]
    for screen in (False, True):
        host = predict_blocks(blocks, model, 0, cores, screen, device_path=False)
        timings: dict = {}
        dev = predict_blocks(blocks, model, 0, cores, screen, device_path=True, timings=timings)
        for h, d in zip(host, dev):
            assert h[2] == d[2] and h[0].shape == d[0].shape
            assert h[0].tobytes() == d[0].tobytes() and h[1].tobytes() == d[1].tobytes()
        assert set(timings) >= {"h2d", "normalize", "model", "encode", "d2h"}
    assert (host[1][1] == 0).all() and host[1][2] != 1  # the all-nodata block skipped; the others inferred
    assert (dev[3][1][30:80, 20:70] == 0).all() and (dev[3][0][30:80, 20:70] == 255).all()


@pytest.mark.parametrize("device", torch_devices())
def test_a_blocks_probabilities_do_not_depend_on_the_other_blocks_of_its_batch(tmp_path, device):
    """On this CPU a batched ResNet-34 UNet forward is not per-sample exact (batch 1 vs 8: 1.5e-8 apart); the
    segmenter passes each block alone, so a block's probabilities are the same bits in any company."""
    from reefmap.model.architectures import analytic_receptive_radius, build_network
    from reefmap.model.segmenter import save_bundle

    torch.manual_seed(0)
    arch = {"name": "resnet34_unet", "in_channels": 3, "classes": len(CLASS_NAMES), "width": 8}
    net = build_network(arch)
    meta = {"name": "resnet-random", "architecture": arch, "bands": ["red", "green", "blue"], "mean": [100.0] * 3,
            "std": [40.0] * 3, "valid_range": [0.0, 255.0], "classes": list(CLASS_NAMES),
            "receptive_radius": analytic_receptive_radius(arch), "halo": 544, "size_multiple": 32}
    model = load_model(save_bundle(tmp_path / "resnet", net, meta), device=device)
    x = torch.randn(6, 3, 64, 96).numpy()
    together = model.predict(x)
    assert all(together[i].tobytes() == model.predict(x[i:i + 1])[0].tobytes() for i in range(6))
    rng = np.random.default_rng(0)
    raw = rng.integers(1, 256, (6, 3, 64, 96)).astype(np.uint8)
    cores = [(slice(0, 64), slice(0, 96))] * 6
    alone = [model.predict_encoded(raw[i:i + 1], 0, cores[:1])[0] for i in range(6)]
    for a, b in zip(alone, model.predict_encoded(raw, 0, cores)):
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


def map_bytes(store) -> dict:
    g = zarr.open_group(str(store.url), mode="r")
    return {k: g[k][...].tobytes() for k in ("reef_probability", "classification")}


@pytest.fixture
def small_mosaic(memory_mosaic):
    """384 x 448 px of the test mosaic, the corner of its nodata area included: 3 x 4 tiles of 128 px."""
    from reefmap.geometry.grid import GeoBox, Shape
    from reefmap.sources import memory_reader
    from reefmap.sources.base import reader_to_dataarray

    mosaic, arr = memory_mosaic
    t = mosaic.rio.transform()
    gb = GeoBox(Shape(384, 448), t @ t.translation(200, 200), str(mosaic.rio.crs))
    reader = memory_reader(np.ascontiguousarray(arr[:, 200:584, 200:648]), gb, nodata=0, band_names=["red", "green", "blue"])
    yield reader_to_dataarray(reader, chunks=128)
    reader.release()


def compute_map(mosaic, bundle, out, *, batch, device_path=None, precision="fp32", device=None):
    plan, job, store = prepare(mosaic, bundle.path, out, tile=128, precision=precision)
    job = dataclasses.replace(job, device_path=device_path, device=device)
    s = execute(plan, job, store, None, RunOptions(batch=batch, progress=False))
    assert s.failed == 0 and s.done >= 8 and s.planned == 12
    return store


@pytest.mark.parametrize("device", torch_devices())
def test_a_map_is_byte_identical_with_batch_1_and_8_on_either_path(small_mosaic, random_bundle, tmp_path, device):
    mosaic = small_mosaic
    maps = {(b, p): map_bytes(compute_map(mosaic, random_bundle, tmp_path / f"b{b}-{p}.zarr", batch=b, device_path=p,
                                          device=device))
            for b in (1, 8) for p in (False, True)}
    first = maps[(1, False)]
    assert all(m == first for m in maps.values())
    cls = np.frombuffer(first["classification"], np.uint8)
    assert len(set(cls.tolist()) - {0}) >= 2  # a real map: several classes and nodata
    assert (cls == 0).any()


def test_precision_is_a_run_option_kept_in_the_map_and_never_mixed(small_mosaic, random_bundle, tmp_path):
    mosaic = small_mosaic
    store = compute_map(mosaic, random_bundle, tmp_path / "bf16.zarr", batch=4, precision="bf16")
    attrs = store.attrs
    assert attrs["parameters"]["precision"] == "bf16" and attrs["parameters"]["compile"] is False
    assert attrs["identity"]["inference"] == {"precision": "bf16", "compile": False}
    with pytest.raises(StoreMismatch, match="precision 'bf16'.*--precision bf16"):
        prepare(mosaic, random_bundle.path, tmp_path / "bf16.zarr", tile=128)  # fp32 into a bf16 map
    prepare(mosaic, random_bundle.path, tmp_path / "bf16.zarr", tile=128, precision="bf16")  # the same: resumes
    fp32 = compute_map(mosaic, random_bundle, tmp_path / "fp32.zarr", batch=4)
    with pytest.raises(StoreMismatch, match="inference"):
        prepare(mosaic, random_bundle.path, fp32.url, tile=128, precision="fp16")
    with pytest.raises(StoreMismatch, match="inference"):
        prepare(mosaic, random_bundle.path, fp32.url, tile=128, compile=True)
    assert map_bytes(store) != map_bytes(fp32)  # bf16 really ran: the probabilities moved
    with pytest.raises(InvalidParameter, match="precision must be one of fp32, bf16, fp16, got 'fp64'"):
        prepare(mosaic, random_bundle.path, tmp_path / "x.zarr", tile=128, precision="fp64")


def test_the_cli_takes_precision_compile_and_batch(tmp_path):
    from reefmap.cli.main import build_parser
    from reefmap.config import RunConfig

    a = build_parser().parse_args(["run", "--mosaic", "m.zarr", "--out", "o.zarr", "--precision", "bf16", "--compile",
                                   "--batch", "8"])
    assert (a.precision, a.compile, a.batch) == ("bf16", True, 8)
    with pytest.raises(InvalidParameter, match="precision must be one of"):
        RunConfig(mosaic=("m.zarr",), out="o.zarr", precision="half")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("mosaic: m.zarr\nout: o.zarr\nprecision: fp16\ncompile: true\n")
    c = RunConfig.from_yaml(cfg)
    assert (c.precision, c.compile) == ("fp16", True)


@pytest.mark.parametrize("device", torch_devices())
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.float32])
def test_raw_blocks_reach_the_device_with_their_exact_values(device, dtype):
    """uint16/uint32 (types torch supports only in part) travel as the same bytes in signed types and are widened on
    the device: every value arrives, the top of the range included."""
    from reefmap.model.segmenter import to_device

    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    edge = np.array([info.min, info.max, 0, 1, info.max // 2 + 1 if np.dtype(dtype).kind in "iu" else 0.5], dtype)
    blocks = [np.resize(np.roll(edge, k), (2, 3, 5)).astype(dtype) for k in range(3)]
    for given in (blocks, np.stack(blocks)):
        t = to_device(given, torch.device(device))
        assert t.device.type == device and t.shape == (3, 2, 3, 5)
        assert np.array_equal(t.cpu().numpy().astype(np.float64), np.stack(blocks).astype(np.float64))


def test_running_out_of_device_memory_stops_the_run_with_the_fix_and_keeps_the_finished_tiles(
        small_mosaic, random_bundle, tmp_path, monkeypatch, capsys):
    """A network that runs out of device memory (a fake: there is no GPU here) after its first blocks: the run stops
    with one ``DeviceOutOfMemory`` naming the block and the fix, not a FAILED record per tile; the tiles finished
    before are kept, and a re-run with a working model finishes the map, identical to an uninterrupted one."""
    from reefmap.errors import DeviceOutOfMemory

    model = load_model(random_bundle.path)  # the segmenter the in-process run uses (loaded once per process)
    real, calls = model.net, []

    class FillsTheDevice(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            if len(calls) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(x)

    monkeypatch.setattr(model, "net", FillsTheDevice())
    plan, job, store = prepare(small_mosaic, random_bundle.path, tmp_path / "m.zarr", tile=128)
    with pytest.raises(DeviceOutOfMemory, match=r"ran out of memory on cpu for 1 block\(s\) of 3 x \d+ x \d+ .*"
                                                r"Tried to allocate 2.00 GiB\. Map with a smaller --tile"):
        execute(plan, job, store, None, RunOptions(batch=1, progress=False))
    states = store.states()
    assert 1 <= int((states > 0).sum()) <= 3 and not (states == TileState.FAILED).any()
    monkeypatch.setattr(model, "net", real)
    again = execute(plan, job, store, None, RunOptions(batch=1, progress=False))
    assert again.failed == 0 and again.already_finished == int((states > 0).sum())
    assert map_bytes(store) == map_bytes(compute_map(small_mosaic, random_bundle, tmp_path / "whole.zarr", batch=1))
