"""Every ``REEFMAP_*`` setting in one validated table; ``get_option`` reads one, ``set_options`` overrides them.

- ``mask`` (``$REEFMAP_MASK``): the candidate mask of a global run, overriding the config's ``mask:``
  (``--mask`` wins over it); ``none`` = no mask. Unset: the config decides.
- ``inference_threads`` (``$REEFMAP_INFERENCE_THREADS``): torch threads per inference call. Unset: the dask
  worker's thread count, else torch's default.
- ``coastline`` (``$REEFMAP_COASTLINE``): the Natural Earth land GeoJSON drawn on progress maps. Unset: the
  simplified copy shipped in the package (``reefmap/viz/data``).
- ``chunk_cache_mb`` (``$REEFMAP_CHUNK_CACHE_MB``): megabytes of decoded source chunks kept per process (the
  ``source chunks`` cache), so that neighbouring tiles' halo'd windows decode each chunk once. 0: no cache.
  Unset: 256.
- ``inprocess_below_mpx`` (``$REEFMAP_INPROCESS_BELOW_MPX``): a run with ``client=None`` computes in this process
  (no cluster to start) when its tiles to compute hold fewer output megapixels than this. 0: always the cluster.
  Unset: 64.
- ``profiles`` (``$REEFMAP_PROFILES``): folders (``os.pathsep``-separated) searched for cluster profiles before
  the built-in ones. Unset: none.

Precedence: a value given to ``set_options`` (inside its ``with`` block) > the environment variable > the
default. ``set_options`` changes this process only; dask workers in other processes read their own environment
(set the variable in the cluster profile's ``job_script_prologue`` for them). Bad values raise
``InvalidParameter`` naming the variable. Not reefmap settings (read by scripts, not by the package):
``REEFMAP_REPO``/``REEFMAP_VENV`` (``pipelines/global_run.sbatch``), ``REEFMAP_PROFILE``/``REEFMAP_JOBS``/
``REEFMAP_NOTEBOOK_OUT`` (``cluster/launch.ipynb``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from reefmap.checks import positive_int
from reefmap.errors import InvalidParameter


def _text(name: str, v: Any) -> str | None:
    """A path or name; empty text is unset."""
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str):
        raise InvalidParameter(f"{name} must be a path or text, got {v!r}")
    return v.strip() or None


def _positive_int(name: str, v: Any) -> int | None:
    if isinstance(v, str):
        if not v.strip():
            return None
        try:
            v = int(v.strip())
        except ValueError:
            raise InvalidParameter(f"{name} {v!r} is not a whole number; set it to a positive integer such as 1") from None
    return positive_int(name, v)


def _non_negative(name: str, v: Any) -> float:
    """A size or count, 0 allowed."""
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise InvalidParameter(f"{name} {v!r} is not a number; set it to a number >= 0 such as 256") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
        raise InvalidParameter(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def _path_list(name: str, v: Any) -> tuple[str, ...]:
    """Folders: text separated by ``os.pathsep``, or a sequence of paths."""
    if isinstance(v, (str, os.PathLike)):
        parts = os.fspath(v).split(os.pathsep)
    elif isinstance(v, (list, tuple)):
        parts = [os.fspath(p) for p in v]
    else:
        raise InvalidParameter(f"{name} must be folders separated by {os.pathsep!r} (or a list), got {v!r}")
    return tuple(p.strip() for p in parts if p.strip())


@dataclass(frozen=True)
class Option:
    """One setting: its environment variable, default, meaning, and the validator that turns text (from the
    environment) or a Python value (from ``set_options``) into the value ``get_option`` returns."""

    name: str
    env: str
    default: Any
    meaning: str
    validate: Callable[[str, Any], Any]

    def parse(self, value: Any, where: str) -> Any:
        return self.default if value is None else self.validate(where, value)


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("mask", "REEFMAP_MASK", None,
           "candidate mask of a global run, overriding the config's mask: ('none' = no mask); --mask wins", _text),
    Option("inference_threads", "REEFMAP_INFERENCE_THREADS", None,
           "torch threads per inference call (default: the dask worker's threads, else torch's)", _positive_int),
    Option("coastline", "REEFMAP_COASTLINE", None,
           "Natural Earth land GeoJSON for progress maps (default: the simplified copy shipped in the package)", _text),
    Option("chunk_cache_mb", "REEFMAP_CHUNK_CACHE_MB", 256.0,
           "megabytes of decoded source chunks kept per process (0 = no chunk cache)", _non_negative),
    Option("inprocess_below_mpx", "REEFMAP_INPROCESS_BELOW_MPX", 64.0,
           "client=None computes in this process when the tiles to compute hold fewer output Mpx (0 = never)",
           _non_negative),
    Option("profiles", "REEFMAP_PROFILES", (),
           f"folders ({os.pathsep!r}-separated) searched for cluster profiles before the built-in ones", _path_list),
)}

_UNSET = object()
_overrides: dict[str, Any] = {}
_lock = threading.Lock()


def _option(name: str) -> Option:
    opt = OPTIONS.get(name) or next((o for o in OPTIONS.values() if o.env == name), None)
    if opt is None:
        raise InvalidParameter(f"unknown reefmap option {name!r}; known options: {sorted(OPTIONS)}")
    return opt


def get_option(name: str) -> Any:
    """The value of option ``name`` (its short name, e.g. ``"mask"``, or its variable, ``"REEFMAP_MASK"``):
    a ``set_options`` override, else the environment variable, else the default."""
    opt = _option(name)
    v = _overrides.get(opt.name, _UNSET)
    if v is not _UNSET:
        return v
    raw = os.environ.get(opt.env)
    return opt.parse(raw, f"${opt.env}") if raw is not None else opt.default


@contextlib.contextmanager
def set_options(**values: Any) -> Iterator[None]:
    """Within the ``with`` block, the given options have these values (None = the default), whatever the
    environment says; validated on entry. This process only (see the module docstring)."""
    parsed = {}
    for name, v in values.items():
        opt = _option(name)
        parsed[opt.name] = opt.parse(v, opt.name)
    with _lock:
        saved = {k: _overrides.get(k, _UNSET) for k in parsed}
        _overrides.update(parsed)
    try:
        yield
    finally:
        with _lock:
            for k, v in saved.items():
                if v is _UNSET:
                    _overrides.pop(k, None)
                else:
                    _overrides[k] = v


__all__ = ["OPTIONS", "Option", "get_option", "set_options"]
