"""Zarr chunks as bytes: the one rule for when an array's chunks can be read and written without zarr.

zarr-python 3's synchronous API runs every read and write on its one event-loop thread, so many threads of one
process barely scale through it. Where an array is laid out simply (``raw_chunks``) its chunks are plain files or
objects that the calling thread encodes and decodes itself with numcodecs, which releases the GIL. The map store
writes its tiles, states and proofs this way; the Zarr mosaic source reads its chunks this way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)

#: the codec chains ``raw_chunks`` accepts, by ``compressed``: True, False, or None (either)
_CHAINS = {True: (("BytesCodec", "ZstdCodec"),), False: (("BytesCodec",),),
           None: (("BytesCodec",), ("BytesCodec", "ZstdCodec"))}


@dataclass(frozen=True)
class RawChunks:
    """How the chunks of one simply laid-out Zarr 3 array are stored: ``shape`` (the full chunk shape; edge chunks
    are stored padded to it), ``dtype``, ``fill`` (a missing chunk reads as this), ``zstd`` (the numcodecs Zstd of
    the array's zstd codec, or None: the bare ``bytes`` codec)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    zstd: Any = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def decode(self, b: bytes) -> np.ndarray:
        """A stored chunk's pixels, of the full chunk ``shape`` (read-only). Raises ValueError when the bytes are
        not one whole chunk (truncated, padded), and the codec's own error when they cannot be decoded."""
        raw = b if self.zstd is None else self.zstd.decode(b)
        if len(raw) != self.nbytes:
            raise ValueError(f"a chunk holds {len(raw)} bytes once decoded, not {self.nbytes}")
        return np.frombuffer(raw, self.dtype.newbyteorder("<")).reshape(self.shape)

    def encode(self, a: np.ndarray) -> bytes | None:
        """The stored bytes of the chunk ``a`` (of the full chunk ``shape``), as zarr writes them; None when it
        equals the fill value everywhere (zarr then stores no chunk)."""
        a = np.ascontiguousarray(a, self.dtype.newbyteorder("<"))
        if not (a != self.fill).any():
            return None
        return a.tobytes() if self.zstd is None else bytes(self.zstd.encode(a))


def raw_chunks(arr, chunks: tuple | None = None, dtype=None, *, compressed: bool | None = False) -> RawChunks | None:
    """``RawChunks`` of the Zarr array ``arr`` when it is laid out simply: Zarr 3, a regular chunk grid (of
    ``chunks`` when given), a fixed-size numeric ``dtype`` (that one when given), C order, "/"-separated default
    chunk keys, the ``bytes`` codec (little endian, or none for 1-byte types) alone or followed by ``zstd`` alone
    (``compressed``: True, only with zstd; False, only without; None, either) — no sharding, no other codec.
    Anything else: None (use zarr)."""
    try:
        meta = arr.metadata
        codecs = tuple(getattr(meta, "codecs", ()))
        names = tuple(type(c).__name__ for c in codecs)
        endian = getattr(codecs[0], "endian", None) if codecs else None
        shape = tuple(int(n) for n in meta.chunk_grid.chunk_shape)
        kind = np.dtype(arr.dtype)
        simple = (getattr(meta, "zarr_format", None) == 3
                  and names in _CHAINS[compressed]
                  and (endian is None or getattr(endian, "value", endian) == "little")
                  and type(meta.chunk_grid).__name__ == "RegularChunkGrid"
                  and (chunks is None or shape == tuple(chunks))
                  and type(meta.chunk_key_encoding).__name__ == "DefaultChunkKeyEncoding"
                  and meta.chunk_key_encoding.separator == "/"
                  and kind.kind in "biuf" and (dtype is None or kind == np.dtype(dtype))
                  and getattr(arr, "order", "C") == "C")
        if not simple:
            return None
        zstd = None
        if len(codecs) == 2:
            from numcodecs import Zstd

            zstd = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
        return RawChunks(shape, kind, np.asarray(meta.fill_value, kind)[()], zstd)
    except Exception as e:  # anything unexpected: the slow, sure path
        _log.debug(f"{getattr(arr, 'path', arr)} is read and written through zarr: {type(e).__name__}: {e}")
        return None


def raw_layout(arr, chunks: tuple | None = None, dtype=None, *, compressed: bool | None = False) -> bool:
    """Whether ``raw_chunks`` of ``arr`` (same arguments) finds it laid out simply."""
    return raw_chunks(arr, chunks, dtype, compressed=compressed) is not None


def chunk_key(arr, coords) -> str:
    """The store key of chunk ``coords`` (one index per dimension) of the Zarr array ``arr``, from the store's
    root: ``"<array path>/c/i/j/k"`` for the default "/" encoding."""
    return f"{arr.path}/{arr.metadata.encode_chunk_key(tuple(int(i) for i in coords))}"
