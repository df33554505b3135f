"""The notebook face of tiled inference: ``segment`` runs ``predict_block`` lazily over any DataArray with
``dask.array.map_overlap``; the values equal those the tile runner stores (``reefmap.compute.tiles``)."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import xarray as xr

from reefmap.compute.tiles import predict_block
from reefmap.errors import BandMismatch, InvalidParameter
from reefmap.model.segmenter import load_model
from reefmap.store.format import PROB_NODATA, PROB_SCALE, classification_attrs


def _overlap_block(block, model, nodata, screen):
    prob, cls, _ = predict_block(block, model, nodata, None, screen)
    return np.stack([prob, cls])


def segment(mosaic, model=None, *, halo: int | None = None, tile: int | None = None, screen: bool = True):
    """Lazily segment ``mosaic`` (a ``DataArray(band, y, x)``, any region of one) → ``xarray.Dataset`` with
    ``reef_probability`` (float, NaN = nodata) and ``classification`` (uint8 codes, 0 = nodata), on the
    mosaic's grid and CRS — the same values a stored map decodes to.

    Built on ``dask.array.map_overlap(depth=halo, boundary="none")``; ``tile`` rechunks first (default: the
    mosaic's own chunks; an edge strip narrower than the halo is computed with its neighbour). The result has
    regular chunks (all as large as the first, the last smaller), so ``.to_zarr`` takes it as it is. Nothing runs
    until you compute.
    """
    model = load_model(model) if model is None or not hasattr(model, "predict") else model
    meta = model.meta
    halo = meta.halo if halo is None else int(halo)
    if halo < meta.receptive_radius:
        warnings.warn(f"halo {halo} < the model's receptive radius {meta.receptive_radius}: tiles will show seams")
    if mosaic.sizes.get("band") != len(meta.bands):
        raise BandMismatch(f"the mosaic has {mosaic.sizes.get('band')} bands but model {meta.name!r} expects "
                           f"{len(meta.bands)} ({', '.join(meta.bands)}); select those bands or use a matching model")
    arr = mosaic.transpose("band", "y", "x").data
    if not isinstance(arr, da.Array):
        arr = da.from_array(arr, chunks=(-1, tile or 1024, tile or 1024), name=False)
    if tile is not None:
        arr = arr.rechunk((-1, tile, tile))
    m = meta.size_multiple
    merged = []
    for ax, chunks in (("y", arr.chunks[1]), ("x", arr.chunks[2])):
        if any(c % m for c in chunks[:-1]) or (halo % m):
            raise InvalidParameter(f"{ax} chunks {chunks[:3]}… and halo {halo} must be multiples of {m} (the model "
                                   f"pools {m}x) for seamless tiles; pass tile=1024 (or another multiple of {m})")
        if len(chunks) > 1 and chunks[-1] < halo:  # a sliver at the edge joins its neighbour (alignment is kept)
            chunks = chunks[:-2] + (chunks[-2] + chunks[-1],)
        if len(chunks) > 1 and min(chunks) < halo:
            raise InvalidParameter(f"{ax} chunks as small as {min(chunks)} px are smaller than the halo {halo}; "
                                   "pass a larger tile=")
        merged.append(chunks)
    arr = arr.rechunk((-1, *merged))
    nodata = mosaic.attrs.get("nodata", mosaic.attrs.get("_FillValue"))
    ov_chunks = ((2,),) + da.overlap.overlap(arr, {0: 0, 1: halo, 2: halo}, boundary="none").chunks[1:]
    out = da.map_overlap(_overlap_block, arr, depth={0: 0, 1: halo, 2: halo}, boundary="none", trim=True,
                         dtype=np.uint8, chunks=ov_chunks, model=model, nodata=nodata, screen=screen,
                         meta=np.empty((0, 0, 0), np.uint8))
    # regular chunks again (a merged edge sliver made the last one larger than the first, which Zarr refuses)
    out = out.rechunk((2, merged[0][0], merged[1][0]))
    coords = {k: v for k, v in mosaic.coords.items() if k in ("y", "x", "spatial_ref")}
    prob = xr.DataArray(out[0], dims=("y", "x"), coords=coords)
    prob = xr.where(prob == PROB_NODATA, np.float32(np.nan), prob.astype(np.float32) / np.float32(PROB_SCALE))
    cls = xr.DataArray(out[1], dims=("y", "x"), coords=coords)
    ds = xr.Dataset({"reef_probability": prob, "classification": cls})
    ds["reef_probability"].attrs.update(long_name="probability that the pixel is coral reef", units="1")
    ds["classification"].attrs.update(classification_attrs(meta.scheme))
    if "spatial_ref" in mosaic.coords or mosaic.rio.crs is not None:
        ds = ds.rio.write_crs(mosaic.rio.crs)
    ds.attrs["reefmap_model"] = meta.sha256
    return ds
