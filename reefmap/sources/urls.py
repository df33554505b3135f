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


class RasterioOpener:
    """What to pass as ``rasterio.open(path, opener=...)`` for files on fsspec filesystem ``fs``.

    A read that raises inside GDAL aborts the whole process (``std::length_error``; rasterio 1.4.4, GDAL 3.10: an
    HTTP 500 answering a range request does it). So the files opened here end where a read fails, GDAL reports
    the short file as its own error, and the read's exception is kept: ``check(location)`` raises it as
    ``Unreachable``. (Everything else is ``fs``'s own.)

    ``memory://`` hands every ``open()`` of a path the *same* file object (one shared position), but GDAL opens a
    file several times and needs each open file separately seekable: there each read-mode ``open`` gets its own
    ``BytesIO`` over the file's bytes.
    """

    def __init__(self, fs):
        self._fs = fs
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self._own_file_per_open = "memory" in protocols
        self.error: Exception | None = None

    def open(self, path, mode="rb", **kw):
        if "r" not in mode or "+" in mode:
            return self._fs.open(path, mode, **kw)
        if self._own_file_per_open:
            import io

            return io.BytesIO(self._fs.cat_file(path))
        return _EndsAtAFailedRead(self._fs.open(path, mode, **kw), self)

    def check(self, location: Any) -> None:
        """Raise a read error of a file opened here as ``Unreachable`` naming ``location`` (once: it is cleared)."""
        e, self.error = self.error, None
        if e is not None:
            raise Unreachable(f"{as_str(location)} cannot be read ({type(e).__name__}: {e}); check the URL, the "
                              "network and the server") from e

    def __getattr__(self, name):
        return getattr(self._fs, name)


class _EndsAtAFailedRead:
    """A read-mode file whose failing ``read`` returns ``b""`` (end of file) and records its error on ``opener``."""

    def __init__(self, f, opener: RasterioOpener):
        self._f, self._opener = f, opener

    def read(self, *args):
        try:
            return self._f.read(*args)
        except Exception as e:  # noqa: BLE001 - aiohttp, botocore, google-auth ... each has its own errors
            self._opener.error = self._opener.error or e
            return b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def rasterio_opener(fs) -> RasterioOpener:
    """The object to pass as ``rasterio.open(path, opener=...)`` for files on fsspec filesystem ``fs``."""
    return RasterioOpener(fs)
