"""The reefmap error hierarchy.

Every error a user can cause by what they pass in is a ``ReefmapError`` subclass whose message names the
offending value (URLs without their credentials) and says how to fix it. The CLI prints these as one line and
exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from reefmap.redaction import redact_text


class ReefmapError(Exception):
    """Base class of all user-facing reefmap errors. Its message never shows a credential: every URL in it is
    redacted (``reefmap.redaction``), whoever formats it, so error text may be printed, logged and recorded."""

    def __init__(self, *args):
        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


class InvalidParameter(ReefmapError, ValueError):
    """A parameter has a value reefmap cannot use (wrong type, range, or combination)."""


class SourceError(ReefmapError):
    """An input mosaic cannot be opened or read."""


class SourceNotFound(SourceError, FileNotFoundError):
    """An input path or URL does not exist."""


class Unreachable(ReefmapError):
    """A remote path or URL (a mosaic or a map) cannot be reached: network, server error, refused credentials."""


class CorruptSource(SourceError):
    """An input file exists but its pixels cannot be decoded (truncated or corrupt)."""


class CRSMismatch(SourceError):
    """Mosaic files are in different CRSs and no target CRS was given."""


class BandMismatch(ReefmapError):
    """The mosaic lacks a band the model expects (or a ``bands`` selection names none of its bands)."""


class InputValuesMismatch(ReefmapError):
    """The mosaic's pixel type or values do not fit the model's declared input (e.g. uint16 reflectance given to a
    model of 8-bit values, or 0..1 floats given to a model of integers)."""


class BBoxError(InvalidParameter):
    """A bounding box is malformed or does not intersect the mosaic."""


class GeometryError(InvalidParameter):
    """A query polygon is malformed, invalid, empty, or not in lon/lat."""


class MaskError(InvalidParameter):
    """A candidate mask cannot be used (missing, unreadable, without a CRS, or empty)."""


class MaskNotFound(MaskError, FileNotFoundError):
    """The candidate mask file does not exist."""


class TruthError(InvalidParameter):
    """Validation truth (labels) cannot be used: missing, unreadable, without a CRS, or with codes outside the
    class scheme."""


class UnknownLayer(InvalidParameter):
    """A layer name is not one of the map's layers."""


class UnsupportedFormat(InvalidParameter):
    """The output's extension names no format reefmap writes."""


class ModelError(ReefmapError):
    """A model bundle is missing, malformed, or cannot run where asked."""


class DeviceOutOfMemory(ModelError):
    """The model step ran out of device memory: every tile of the run would, so the run stops (nothing half-written)."""


class StoreError(ReefmapError):
    """An output store cannot be used."""


class StoreMismatch(StoreError):
    """An existing store was written with another model, grid or parameters; refusing to mix them."""


class StoreNotWritable(StoreError):
    """The output store cannot be written: a read-only file system, no permission, or no space left."""


class NotAReefmapStore(StoreError):
    """A path holds something that is not a reefmap map."""


class DamagedMap(StoreError):
    """A finished tile's stored chunk cannot be decoded (``reefmap verify --repair`` marks it for recomputing)."""


class OutputExists(StoreError):
    """The output path exists and overwriting was not asked for."""


class TileFailures(ReefmapError):
    """A run finished, but some tiles failed (each is recorded in the store with its reason)."""

    def __init__(self, message: str, failed: dict[tuple[int, int], str]):
        super().__init__(message)
        self.failed = failed


class ClusterError(ReefmapError):
    """A cluster profile or launch request cannot be honoured."""


class AbandonRun(BaseException):
    """Raised (by the second stop signal) to abandon the tiles in flight at once.

    A control-flow signal, not a user error: like ``KeyboardInterrupt`` it derives from ``BaseException`` so that
    no ``except Exception`` on the way swallows it.
    """
