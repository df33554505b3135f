"""Small fsspec helpers shared by the readers: local paths vs URLs, filesystems, existence checks.

A *location* is a ``str`` or ``os.PathLike``: a local path, a ``file://`` URL, or any fsspec URL
(``gs://``, ``s3://``, ``memory://`` ...). Local locations are normalised to absolute paths so a spec built
here still points at the same file on a worker started in another directory.

A URL may carry credentials (``https://user:pw@host/...``, a presigned ``?X-Amz-Signature=...``): the real one
stays in memory for the readers; ``redact(url)`` / ``redact_text(message)`` are what is shown or stored.
"""

from __future__ import annotations

import os
from typing import Any

from reefmap.errors import InvalidParameter, Unreachable
from reefmap.redaction import redact, redact_text  # noqa: F401  (re-exported for the readers and their callers)

_LOCAL_PROTOCOLS = ("file", "local")


def as_str(location: Any) -> str:
    """``location`` as a string (``Path`` → ``str``); anything else that is not a string is rejected."""
    if isinstance(location, (str, os.PathLike)):
        return os.fspath(location)
    raise TypeError(f"expected a path or URL, got {type(location).__name__} {location!r}")


def protocol(location: Any) -> str:
    """The URL scheme (``"gs"``, ``"memory"``…), or ``"file"`` for a plain local path."""
    s = as_str(location)
    if "://" in s:
        return s.split("://", 1)[0].lower()
    return "file"


def is_local(location: Any) -> bool:
    return protocol(location) in _LOCAL_PROTOCOLS


def local_path(location: Any) -> str:
    """The absolute local path of a plain path or ``file://`` URL."""
    s = as_str(location)
    if "://" in s:
        s = s.split("://", 1)[1]
    return os.path.abspath(os.path.expanduser(s))


def normalize(location: Any) -> str:
    """A canonical string for a spec: an absolute path for local files, the URL unchanged otherwise
    (a trailing ``/`` is dropped)."""
    if is_local(location):
        return local_path(location)
    s = as_str(location)
    return s.rstrip("/") if not s.endswith("://") else s


def url_to_fs(location: Any, storage_options: dict | None = None):
    """``(filesystem, path)`` for ``location`` (fsspec; instances are cached by fsspec). ``InvalidParameter`` naming
    the package to install when the URL's filesystem is not installed (``s3://`` without s3fs)."""
    import fsspec

    if is_local(location):
        return fsspec.filesystem("file"), local_path(location)
    try:
        return fsspec.core.url_to_fs(as_str(location), **(storage_options or {}))
    except ImportError as e:
        from fsspec.registry import known_implementations

        proto = protocol(location)
        package = known_implementations.get(proto, {}).get("class", "").split(".")[0]
        raise InvalidParameter(f"{proto}:// URLs need a package that is not installed ({e}): "
                               f"pip install {package or proto + 'fs'}") from None


def exists(location: Any, storage_options: dict | None = None) -> bool:
    """Whether a file or directory/prefix exists at ``location`` (the listing cache is bypassed). ``Unreachable``
    when that cannot be told: a network error, an HTTP error other than 404 (a 500 is not "missing")."""
    if is_local(location):
        return os.path.exists(local_path(location))
    fs, path = url_to_fs(location, storage_options)
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001 - not every filesystem has a cache to invalidate
        pass
    strict = {"strict": True} if protocol(location) in ("http", "https") else {}  # else any HTTP error reads as False
    try:
        return bool(fs.exists(path, **strict))
    except Exception as e:  # noqa: BLE001 - aiohttp, botocore, google-auth ... each has its own errors
        raise Unreachable(f"{as_str(location)} cannot be reached ({type(e).__name__}: {e}); check the URL, the "
                          "network and the credentials (storage_options)") from None


def join(location: Any, *names: str) -> str:
    """``location/names...`` for paths and URLs alike."""
    s = normalize(location)
    if is_local(s):
        return os.path.join(s, *names)
    return "/".join([s.rstrip("/"), *names])


def basename(location: Any) -> str:
    return normalize(location).rstrip("/").rsplit("/", 1)[-1]


def suffix(location: Any) -> str:
    """The lower-case extension of ``location`` (``".tif"``), ignoring a trailing ``/`` and, for http(s)
    URLs, a query string (``...cog.tif?token=...``)."""
    name = basename(location)
    if protocol(location) in ("http", "https"):
        name = name.split("?", 1)[0]
    return os.path.splitext(name)[1].lower()


class _OwnFilePerOpen:
    """An fsspec memory filesystem, adapted for rasterio's ``opener=``.

    ``memory://`` hands every ``open()`` of a path the *same* file object (one shared position), but GDAL
    opens a file several times and needs each open file separately seekable (and reads from several threads).
    Each read-mode ``open`` here gets its own ``BytesIO`` over the file's bytes; everything else is delegated.
    """

    def __init__(self, fs):
        self._fs = fs

    def open(self, path, mode="rb", **kw):
        if "r" in mode and "+" not in mode:
            import io

            return io.BytesIO(self._fs.cat_file(path))
        return self._fs.open(path, mode, **kw)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def rasterio_opener(fs):
    """The object to pass as ``rasterio.open(path, opener=...)`` for files on fsspec filesystem ``fs``."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "memory" in protocols:
        return _OwnFilePerOpen(fs)
    return fs
