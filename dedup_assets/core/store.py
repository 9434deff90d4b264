"""Image stores: where collections of images are read from and where results are written.

A *store* has a root; a *collection* is a folder (prefix) below that root. Results for
collection ``c`` go to ``<output root>/<c>_deduplicated/``. The source collection is never
written to.

This module holds the interface and the local-folder implementation. It has no Dagster
import so it can be used (and pickled into worker processes) on its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

from .content import content_hash_file
from .parallel import DEFAULT_READ_AHEAD

#: File extensions taken as images without looking at the content.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif",
        ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".heic", ".heif", ".avif", ".svg", ".ico",
        ".jp2", ".tga",
    }
)

#: Leading bytes of image formats, for files whose extension says nothing.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little endian
    b"MM\x00*",  # TIFF big endian
    b"RIFF",  # WebP (checked further below)
    b"P1", b"P2", b"P3", b"P4", b"P5", b"P6",  # netpbm
)

logger = logging.getLogger("dedup_assets.store")

DEDUP_SUFFIX = "_deduplicated"
SNIFF_BYTES = 16


def looks_like_image(name: str, head: bytes) -> bool:
    """True when a file is an image by its extension or by its first bytes."""
    if PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS:
        return True
    if head.startswith(b"RIFF"):
        return head[8:12] == b"WEBP"
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        return len(head) > 2 and head[2:3] in (b"\n", b" ", b"\r", b"\t")
    return any(head.startswith(m) for m in _MAGIC if len(m) > 2)


def collection_slug(collection: str) -> str:
    """A safe partition key for a collection prefix: ``[a-z0-9_-]``, at most 64 characters.

    The plain name is used when it is already safe; otherwise the sanitised name gets a short
    hash of the real prefix so that two prefixes never share a key.
    """
    name = collection.strip("/")
    if not name:
        raise ValueError("a collection must be a non-empty folder or prefix")
    safe = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_") or "collection"
    if safe == name and len(safe) <= 64:
        return safe
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{safe[:55]}-{digest}"


@dataclass(frozen=True)
class BlobInfo:
    """One inventoried file. ``path`` is relative to the collection, with ``/`` separators."""

    path: str
    size: int
    etag: str
    last_modified: float
    content_md5: str | None = None


class StoreError(RuntimeError):
    """A store operation failed in a way the caller should report."""


class ConfigurationError(StoreError):
    """A setting or a permission the user must fix: a malformed setting, an unknown account or
    host, a failed authentication, a missing container or folder, an output that cannot be
    written. Retrying cannot help, so it is never retried (neither by the Azure retry policy
    nor by the assets' RetryPolicy); its message is one line saying what to fix, without
    secrets. The CLI prints it as ``dedup-assets: …`` and exits with status 2.
    """


#: Name of the small file (blob) written and deleted by :meth:`ImageStore.preflight`.
PROBE_PREFIX = ".dedup-probe-"


def probe_folder(folder: Path, what: str) -> None:
    """Raise :class:`ConfigurationError` naming ``what`` (e.g. "the output folder") unless
    ``folder`` can be written: a probe file is written and deleted in it, or, when it does not
    exist yet, in its nearest existing parent (where it would be created). Nothing is left
    behind, not even the folder.

    A real write, not a permission check: as root, modes do not stop a write, but a read-only
    file system or a regular file in the path does.
    """
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigurationError(
            f"cannot write {what} {folder}: {existing} is a file, not a folder: choose another folder"
        )
    probe = existing / f"{PROBE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        where = "" if existing == folder else f" in {existing}"
        raise ConfigurationError(
            f"cannot write {what} {folder} ({exc.strerror or type(exc).__name__}{where}): "
            "choose a writable folder"
        ) from None


class ImageStore(ABC):
    """Where images are read from and results are written to."""

    kind: str
    #: reads a worker keeps in flight by default (``parallel.map_reading``): a remote store
    #: hides its latency behind the decoding; a local disk gains nothing from reader threads
    read_ahead: ClassVar[int] = DEFAULT_READ_AHEAD

    @abstractmethod
    def describe(self) -> str:
        """A human description without secrets (for logs and metadata)."""

    @abstractmethod
    def preflight(self, collection: str) -> None:
        """Check in seconds that ``collection`` can be listed and read and that its output
        folder can be written (a probe written and deleted there); raise
        :class:`ConfigurationError` saying what to fix otherwise. Run by the CLI before its
        first Dagster run and by every asset that uses the store, at its start."""

    @abstractmethod
    def list_collections(self) -> list[str]:
        """Top-level collections (folders/prefixes) holding files, outputs excluded."""

    @abstractmethod
    def iter_blobs(self, collection: str) -> Iterator[BlobInfo]:
        """Every image file under the collection, recursively, in a deterministic order."""

    @abstractmethod
    def read_bytes(self, collection: str, path: str) -> bytes:
        """The content of one file of the collection."""

    @abstractmethod
    def copy_to_output(
        self, collection: str, path: str, dest: str, content_hash: str, content_md5: str | None = None
    ) -> str:
        """Copy a source file to ``dest`` (relative to the collection's output folder).

        Returns ``"copied"`` or ``"skipped"`` (an identical file was there already). The copy
        is verified against ``content_hash`` (:func:`.content.content_hash` of the bytes stage 1
        analysed; a store may verify through ``content_md5``, the MD5 the inventory recorded,
        where it keeps one); a mismatch raises :class:`StoreError`.
        """

    def copy_many(self, collection: str, items: Iterable[tuple[str, str, str, str | None]]) -> Iterator[str]:
        """:meth:`copy_to_output` for each ``(path, dest, content_hash, content_md5)``, results
        in order.

        Stores with a network behind them override this to run copies concurrently.
        """
        for path, dest, chash, md5 in items:
            yield self.copy_to_output(collection, path, dest, chash, md5)

    @abstractmethod
    def write_output(self, collection: str, name: str, data: bytes) -> str:
        """Write a result file into the collection's output folder; returns its location."""

    @abstractmethod
    def read_output(self, collection: str, name: str) -> bytes:
        """The content of one file of the collection's output folder."""

    @abstractmethod
    def list_outputs(self, collection: str, folder: str) -> list[str]:
        """Files (relative to the output folder) below ``folder`` of the output folder."""

    @abstractmethod
    def delete_output(self, collection: str, dest: str) -> None:
        """Delete one file of the output folder (never a source file)."""

    @abstractmethod
    def output_location(self, collection: str) -> str:
        """Where the collection's results are written."""


def _safe_relative(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise StoreError(f"refusing unsafe relative path {rel!r}")
    return p


@dataclass(frozen=True)
class LocalFolderStore(ImageStore):
    """Collections are sub-folders of ``root``; outputs go below ``output_root`` (default root)."""

    root: str
    output_root: str | None = None
    kind: str = "local"
    read_ahead: ClassVar[int] = 1  # threads cost ~3 % of stage 1 on local files (bench stage1)

    @property
    def _root(self) -> Path:
        return Path(self.root).expanduser().resolve()

    @property
    def _out_root(self) -> Path:
        return Path(self.output_root).expanduser().resolve() if self.output_root else self._root

    def describe(self) -> str:
        return f"local folder {self._root}"

    def collection_dir(self, collection: str) -> Path:
        d = self._root.joinpath(*_safe_relative(collection).parts)
        if not d.is_dir():
            raise StoreError(f"collection folder {d} does not exist")
        return d

    def output_dir(self, collection: str) -> Path:
        rel = _safe_relative(collection)
        return self._out_root.joinpath(*rel.parent.parts, rel.name + DEDUP_SUFFIX)

    def output_location(self, collection: str) -> str:
        return str(self.output_dir(collection))

    def preflight(self, collection: str) -> None:
        d = self._root.joinpath(*_safe_relative(collection).parts)
        if not d.is_dir():
            raise ConfigurationError(f"the collection folder {d} does not exist (or is not a folder)")
        try:
            os.scandir(d).close()
        except OSError as exc:
            raise ConfigurationError(f"cannot list the collection folder {d} ({exc.strerror})") from None
        probe_folder(self.output_dir(collection), "the output folder")

    def list_collections(self) -> list[str]:
        if not self._root.is_dir():
            raise ConfigurationError(f"the folder of collections {self._root} does not exist")
        return sorted(
            e.name
            for e in os.scandir(self._root)
            if e.is_dir(follow_symlinks=False)
            and not e.name.startswith(".")
            and not e.name.endswith(DEDUP_SUFFIX)
        )

    def iter_blobs(self, collection: str) -> Iterator[BlobInfo]:
        """Every image below the collection folder, each listed once, by its path there.

        Symbolic links are followed, except where that would list a file twice: a link back
        to a folder being listed (a loop), to anything inside the collection (listed under
        its own path) or to something listed already (a file outside the collection reached
        by two links). What is skipped so, and broken links, get a warning on the
        ``dedup_assets.store`` logger that names them.
        """
        base = self.collection_dir(collection)
        real_base = base.resolve()
        out = self.output_dir(collection).resolve()
        seen: dict[Path, str] = {}  # real path -> listed as (folders; files outside)

        def skip(path: str, target: Path, why: str) -> None:
            logger.warning("%s: %s -> %s skipped: %s", base, path, target, why)

        def not_followed(link: str, target: Path) -> str | None:
            """Why the link ``link`` to ``target`` (resolved) is not followed, if it is not."""
            if not target.exists():
                return "its target does not exist"
            if target in real_base.parents:
                return "a loop"
            if target.is_dir() and target in seen:  # on the way down to the link: a loop
                at = seen[target]
                if at == "." or link.startswith(at + "/"):
                    return "a loop"
            if target == real_base or real_base in target.parents:
                inside = target.relative_to(real_base).as_posix()
                if any(part.startswith(".") for part in inside.split("/")):
                    return f"inside the collection, in hidden {inside!r} (not listed)"
                return f"inside the collection, listed as {inside!r}"
            if target in seen:
                return f"listed already as {seen[target]!r}"
            return None

        def walk(d: Path, real: Path, rel: str) -> Iterator[BlobInfo]:
            seen[real] = rel.rstrip("/") or "."
            outside = real != real_base and real_base not in real.parents
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                raise StoreError(f"cannot list {d}: {exc}") from exc
            for e in entries:
                if e.name.startswith("."):
                    continue
                child = f"{rel}{e.name}"
                target = real / e.name
                if e.is_symlink():
                    target = Path(os.path.realpath(e.path))
                    why = not_followed(child, target)
                    if why:
                        skip(child, target, why)
                        continue
                if e.is_dir():
                    if target != out:
                        yield from walk(Path(e.path), target, child + "/")
                elif e.is_file():
                    st = e.stat()
                    if not self._is_image(e.path, e.name, st.st_size):
                        continue
                    if outside or e.is_symlink():  # reachable by more than one path
                        if target in seen:
                            skip(child, target, f"listed already as {seen[target]!r}")
                            continue
                        seen[target] = child
                    yield BlobInfo(
                        path=child,
                        size=st.st_size,
                        etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
                        last_modified=st.st_mtime,
                    )

        yield from walk(base, real_base, "")

    @staticmethod
    def _is_image(full: str, name: str, size: int) -> bool:
        if PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS:
            return True
        if size == 0:
            return False
        try:
            with open(full, "rb") as f:
                head = f.read(SNIFF_BYTES)
        except OSError:
            return True  # unreadable: keep it so it is reported, not lost
        return looks_like_image(name, head)

    def read_bytes(self, collection: str, path: str) -> bytes:
        full = self.collection_dir(collection).joinpath(*_safe_relative(path).parts)
        try:
            return full.read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read {path!r}: {exc.strerror or exc}") from exc

    def _dest(self, collection: str, dest: str) -> Path:
        return self.output_dir(collection).joinpath(*_safe_relative(dest).parts)

    def copy_to_output(
        self, collection: str, path: str, dest: str, content_hash: str, content_md5: str | None = None
    ) -> str:
        src = self.collection_dir(collection).joinpath(*_safe_relative(path).parts)
        target = self._dest(collection, dest)
        if target.is_file() and target.stat().st_size == src.stat().st_size:
            if content_hash_file(target) == content_hash:
                return "skipped"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        shutil.copyfile(src, tmp)
        if content_hash_file(tmp) != content_hash:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"copy of {path!r} does not match its content hash (source changed?)")
        os.replace(tmp, target)
        return "copied"

    def write_output(self, collection: str, name: str, data: bytes) -> str:
        target = self._dest(collection, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return str(target)

    def read_output(self, collection: str, name: str) -> bytes:
        try:
            return self._dest(collection, name).read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read output {name!r}: {exc.strerror or exc}") from exc

    def list_outputs(self, collection: str, folder: str) -> list[str]:
        base = self.output_dir(collection)
        top = base.joinpath(*_safe_relative(folder).parts)
        if not top.is_dir():
            return []
        return sorted(
            p.relative_to(base).as_posix() for p in top.rglob("*") if p.is_file()
        )

    def delete_output(self, collection: str, dest: str) -> None:
        self._dest(collection, dest).unlink(missing_ok=True)
