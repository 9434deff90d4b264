"""Azure Blob Storage as an image store (azure-storage-blob; no Dagster import).

Layout, with ``P`` the store's prefix (may be empty) and ``OP`` the output prefix (default
``P``):

- a collection ``c`` is the blobs under ``<container>/P/c/``;
- results go to ``<output container>/OP/c_deduplicated/best/…``, ``…/duplicates/…`` and
  ``…/image_report.csv``;
- nothing is ever written or deleted under a source collection (checked on every write).

The store is a frozen dataclass holding only settings, so it pickles into worker processes;
each process builds its own SDK client, request slots and byte budget on first use
(:func:`_runtime`). Secrets never appear in ``repr``, :meth:`describe`, locations or errors
(see :func:`redact`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .azure_retry import (
    DEFAULT_TOTAL_TIMEOUT,
    ThrottleAwareRetry,
    describe_failure,
    unresolved_host,
)
from .content import content_hash as content_hash_of
from .store import (
    DEDUP_SUFFIX,
    IMAGE_EXTENSIONS,
    PROBE_PREFIX,
    SNIFF_BYTES,
    BlobInfo,
    ConfigurationError,
    ImageStore,
    StoreError,
    _safe_relative,
    looks_like_image,
)

MiB = 1 << 20

#: blob metadata on a verified copy: the content hash of its bytes (lets a re-run skip it)
HASH_METADATA = "dedup_content_xxh3"

#: Azurite's development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

#: The settings of an Azure Storage connection string (lower case).
CONNECTION_STRING_KEYS = frozenset(
    {
        "defaultendpointsprotocol", "accountname", "accountkey", "endpointsuffix",
        "sharedaccesssignature", "blobendpoint", "queueendpoint", "fileendpoint",
        "tableendpoint", "dfsendpoint", "usedevelopmentstorage", "developmentstorageproxyuri",
    }
)

_SECRET_PATTERNS = (
    re.compile(r"(?i)(sig=)[^&\s'\"]+"),
    re.compile(r"(?i)(AccountKey=)[^;\s'\"]+"),
    re.compile(r"(?i)(SharedAccessSignature=)[^;\s'\"]+"),
    re.compile(r"(?i)(SharedKey [^:\s]+:)[^\s'\"]+"),
)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with SAS signatures, account keys and the given secrets replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


def strip_query(url: str) -> str:
    """The URL without its query (where a SAS token would be)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def parse_az_url(url: str) -> tuple[str, str]:
    """``az://container/some/prefix`` -> ``("container", "some/prefix")``."""
    if not url.startswith("az://"):
        raise ValueError(f"not an az:// URL: {url!r}")
    container, _, prefix = url[len("az://"):].partition("/")
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", container):
        raise ValueError(f"{container!r} is not a valid Azure container name")
    return container, prefix.strip("/")


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class AzureAuth:
    """How to reach the storage account. ``kind``: key, sas, default or anonymous.

    ``secret`` is the account key or SAS token; ``options`` are keyword arguments for
    ``DefaultAzureCredential`` (created in each process that needs it).
    """

    account_url: str
    kind: str = "default"
    secret: str | None = field(default=None, repr=False)
    account_name: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        """Settings checked before any request; mistakes raise :class:`ConfigurationError`."""
        if self.kind not in ("key", "sas", "default", "anonymous"):
            raise ConfigurationError(f"unknown Azure credential kind {self.kind!r}")
        if self.kind in ("key", "sas") and not self.secret:
            raise ConfigurationError(f"the Azure {self.kind} credential is empty")
        parts = urlsplit(self.account_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"the account URL {strip_query(self.account_url)!r} is not "
                "https://<account>.blob.core.windows.net: check DEDUP_AZURE_ACCOUNT_URL or the "
                "connection string's BlobEndpoint / DefaultEndpointsProtocol"
            )
        if self.kind == "key":
            try:
                base64.b64decode(self.secret, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigurationError(
                    "the account key is not valid base64: copy it again from the storage "
                    "account's access keys (AccountKey of the connection string, or AZURE_STORAGE_KEY)"
                ) from None

    @classmethod
    def from_connection_string(cls, conn: str) -> AzureAuth:
        """Parse an Azure Storage connection string (key or SAS; ``UseDevelopmentStorage``).

        Mistakes raise :class:`ConfigurationError` naming what is wrong, never a value."""
        parts: dict[str, str] = {}
        items = [item for item in conn.strip().split(";") if item.strip()]
        for n, item in enumerate(items, 1):
            k, sep, v = item.partition("=")
            if not sep or k.strip().lower() not in CONNECTION_STRING_KEYS:
                # the item is not named: it may be a secret pasted in the wrong place
                raise ConfigurationError(
                    f"AZURE_STORAGE_CONNECTION_STRING is malformed: item {n} of {len(items)} is "
                    "not Name=Value with a known name (expected DefaultEndpointsProtocol=https;"
                    "AccountName=…;AccountKey=…;EndpointSuffix=core.windows.net, or "
                    "BlobEndpoint=…;SharedAccessSignature=…, as the portal gives it)"
                )
            parts[k.strip().lower()] = v.strip()
        found = ", ".join(k.strip().partition("=")[0].strip() for k in items)
        if parts.get("usedevelopmentstorage", "").lower() == "true":
            return cls(
                "http://127.0.0.1:10000/" + AZURITE_ACCOUNT, "key", AZURITE_KEY, AZURITE_ACCOUNT
            )
        name = parts.get("accountname")
        url = parts.get("blobendpoint")
        if not url:
            if not name:
                raise ConfigurationError(
                    "AZURE_STORAGE_CONNECTION_STRING has neither AccountName nor BlobEndpoint "
                    f"(it has: {found})"
                )
            proto = parts.get("defaultendpointsprotocol", "https")
            suffix = parts.get("endpointsuffix", "core.windows.net")
            url = f"{proto}://{name}.blob.{suffix}"
        if parts.get("accountkey"):
            return cls(strip_query(url), "key", parts["accountkey"], name)
        if parts.get("sharedaccesssignature"):
            return cls(strip_query(url), "sas", parts["sharedaccesssignature"].lstrip("?"), name)
        raise ConfigurationError(
            "AZURE_STORAGE_CONNECTION_STRING has neither AccountKey nor SharedAccessSignature "
            f"(it has: {found})"
        )

    def credential(self) -> Any:
        if self.kind == "key":
            if self.account_name:
                return {"account_name": self.account_name, "account_key": self.secret}
            return self.secret
        if self.kind == "sas":
            # a string, so that blob URLs (copy sources) carry the token, as Azure requires
            return self.secret.lstrip("?")
        if self.kind == "default":
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential(**dict(self.options))
        return None

    def describe(self) -> str:
        return f"{strip_query(self.account_url)} ({self.kind} credential)"


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class AzureLimits:
    """Concurrency, memory and retry limits, per process (see README)."""

    max_concurrency: int = 16
    max_bytes_in_flight: int = 256 * MiB
    max_blob_bytes: int = 1024 * MiB
    chunk_bytes: int = 4 * MiB
    page_size: int = 1000
    retry_total: int = 10
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0
    retry_total_timeout: float = DEFAULT_TOTAL_TIMEOUT
    connect_timeout: float = 20.0
    read_timeout: float = 120.0
    copy_timeout: float = 900.0

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.page_size < 1 or self.retry_total < 0:
            raise ConfigurationError("Azure limits must be positive")
        if self.retry_total_timeout <= 0:
            raise ConfigurationError("retry_total_timeout_s must be positive")
        if self.max_bytes_in_flight < self.chunk_bytes:
            raise ConfigurationError("max_bytes_in_flight must be at least chunk_bytes")


class _ByteBudget:
    """At most ``capacity`` bytes reserved at once (one request larger than it runs alone)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        n = max(0, min(n, self.capacity))
        with self._cond:
            self._cond.wait_for(lambda: self.used + n <= self.capacity)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


@dataclass
class _Runtime:
    service: Any
    slots: threading.BoundedSemaphore
    budget: _ByteBudget


_RUNTIMES: dict[tuple, _Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _runtime(auth: AzureAuth, limits: AzureLimits) -> _Runtime:
    """This process's SDK client, request slots and byte budget for ``auth`` + ``limits``."""
    secret_id = hashlib.sha256((auth.secret or "").encode()).hexdigest()
    key = (os.getpid(), auth.account_url, auth.kind, secret_id, auth.options, limits)
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            rt = _RUNTIMES[key] = _Runtime(
                service=_make_service(auth, limits),
                slots=threading.BoundedSemaphore(limits.max_concurrency),
                budget=_ByteBudget(limits.max_bytes_in_flight),
            )
        return rt


def _make_service(auth: AzureAuth, limits: AzureLimits):
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import BlobServiceClient

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=limits.max_concurrency + 4, max_retries=0
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return BlobServiceClient(
        account_url=auth.account_url,
        credential=auth.credential(),
        retry_policy=ThrottleAwareRetry(
            retry_total=limits.retry_total,
            backoff=limits.retry_backoff,
            backoff_max=limits.retry_backoff_max,
            total_timeout=limits.retry_total_timeout,
        ),
        transport=RequestsTransport(session=session, session_owner=True),
        connection_timeout=limits.connect_timeout,
        read_timeout=limits.read_timeout,
        max_single_get_size=limits.chunk_bytes,
        max_chunk_get_size=limits.chunk_bytes,
        max_block_size=limits.chunk_bytes,
        max_single_put_size=max(limits.chunk_bytes, 4 * MiB),
    )


# --------------------------------------------------------------------------- the store


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _md5_hex(props) -> str | None:
    md5 = props.content_settings.content_md5 if props.content_settings else None
    return bytes(md5).hex() if md5 else None


#: 403 answers that mean "this credential is not who it claims" rather than "not allowed"
_AUTH_CODES = frozenset({"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"})


def configuration_problem(exc: BaseException, account_url: str, container: str | None) -> str | None:
    """What to fix when ``exc`` comes from a setting or a permission, not an outage; else None.

    - a host that does not exist (DNS: no such name): the account name or endpoint;
    - authentication failed (401, 403 AuthenticationFailed, a key that cannot sign, no
      credential available): the key, SAS token or login;
    - any other 403: a permission the credential lacks;
    - 404 ContainerNotFound: the container.
    """
    from azure.core.exceptions import ClientAuthenticationError

    account = strip_query(account_url)
    if unresolved_host(exc):
        host = urlsplit(account_url).hostname
        return (
            f"the storage account host {host} does not exist (DNS: no such name): check the "
            "account name or endpoint (AZURE_STORAGE_CONNECTION_STRING or DEDUP_AZURE_ACCOUNT_URL)"
        )
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    code = str(getattr(code, "value", code) or "")
    if status == 404 and code == "ContainerNotFound":
        return (
            f"the container {container!r} does not exist in {account}: create it, or fix the "
            "container name (az://CONTAINER/…, DEDUP_AZURE_CONTAINER, DEDUP_AZURE_OUTPUT_CONTAINER)"
        )
    answer = " ".join(str(x) for x in (status, code) if x) or _short(exc)
    if status == 401 or code in _AUTH_CODES or (
        isinstance(exc, ClientAuthenticationError) and status is None
    ) or (status == 403 and "authenticate" in str(getattr(exc, "message", "") or exc)):
        return (
            f"authentication to {account} failed ({answer}): check the account key, the "
            "SAS token (and its expiry) or the Azure login"
        )
    if status == 403:
        return (
            f"the credential is not allowed to do this in {account} ({answer}): grant it "
            "the permissions listed under 'Least privilege' in the README"
        )
    return None


def _short(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)
    status = getattr(exc, "status_code", None)
    if status is None and code is None:
        return describe_failure(exc)
    first = (str(getattr(exc, "reason", None) or exc).strip().splitlines() or [""])[0]
    head = " ".join(str(x) for x in (status, code) if x)
    return f"{type(exc).__name__} {head}: {first}".replace("  ", " ") if head else f"{type(exc).__name__}: {first}"


@dataclass(frozen=True)
class AzureBlobStore(ImageStore):
    """Collections are prefixes of ``container`` below ``prefix``; see the module docstring."""

    auth: AzureAuth = field(repr=False)
    container: str
    prefix: str = ""
    output_container: str | None = None
    output_prefix: str | None = None
    collections: tuple[str, ...] | None = None
    limits: AzureLimits = field(default_factory=AzureLimits)
    kind: str = "azure"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        if self.output_prefix is not None:
            object.__setattr__(self, "output_prefix", self.output_prefix.strip("/"))
        if self.collections is not None:
            object.__setattr__(
                self, "collections", tuple(sorted({c.strip("/") for c in self.collections}))
            )

    # -- names -----------------------------------------------------------------------

    @property
    def _out_container(self) -> str:
        return self.output_container or self.container

    @property
    def _out_prefix(self) -> str:
        return self.prefix if self.output_prefix is None else self.output_prefix

    def source_prefix(self, collection: str) -> str:
        return _join(self.prefix, *_safe_relative(collection).parts)

    def output_dir(self, collection: str) -> str:
        rel = _safe_relative(collection)
        return _join(self._out_prefix, *rel.parent.parts, rel.name + DEDUP_SUFFIX)

    def _source_name(self, collection: str, path: str) -> str:
        return _join(self.source_prefix(collection), *_safe_relative(path).parts)

    def _output_name(self, collection: str, rel: str) -> str:
        name = _join(self.output_dir(collection), *_safe_relative(rel).parts)
        self._check_writable(collection, name)
        return name

    def _check_writable(self, collection: str, name: str) -> None:
        """The guard of the source: no write or delete ever lands under a collection."""
        if self._out_container != self.container:
            return
        src = self.source_prefix(collection) + "/"
        if name.startswith(src) or (name + "/").startswith(src):
            raise StoreError(
                f"refusing to write {name!r}: it lies under the source collection {src!r}"
            )
        if self.collections is not None:
            for c in self.collections:
                if name.startswith(self.source_prefix(c) + "/"):
                    raise StoreError(f"refusing to write {name!r} under the source collection {c!r}")

    # -- clients and errors --------------------------------------------------------------

    def _rt(self) -> _Runtime:
        return _runtime(self.auth, self.limits)

    def _blob(self, container: str, name: str):
        return self._rt().service.get_blob_client(container, name)

    def _error(self, what: str, exc: BaseException, container: str | None = None) -> StoreError:
        """The error to raise: a :class:`ConfigurationError` saying what to fix when ``exc``
        comes from a setting or a permission (:func:`configuration_problem`), else a
        :class:`StoreError`; secrets redacted."""
        problem = configuration_problem(exc, self.auth.account_url, container or self.container)
        if problem:
            return ConfigurationError(redact(f"{what}: {problem}", self.auth.secret))
        return StoreError(redact(f"{what}: {_short(exc)}", self.auth.secret))

    def preflight(self, collection: str) -> None:
        """One listing page of the collection (account, DNS, credential, container, list
        permission), one byte of its first blob (read permission), and a probe blob written
        and deleted in its output folder (output container, write and delete permission)."""
        from azure.core.exceptions import AzureError

        base = self.source_prefix(collection) + "/"
        where = f"az://{self.container}/{base}"
        try:
            client = self._rt().service.get_container_client(self.container)
            pages = client.list_blobs(name_starts_with=base, results_per_page=1).by_page()
            first = next(iter(next(pages, [])), None)
        except AzureError as exc:
            raise self._error(f"cannot list {where}", exc) from None
        if first is None:
            raise ConfigurationError(
                f"there is no blob under {where} in {strip_query(self.auth.account_url)}: "
                "check the container and the prefix"
            )
        try:
            if first.size:
                self._blob(self.container, first.name).download_blob(offset=0, length=1).readall()
        except AzureError as exc:
            raise self._error(f"cannot read az://{self.container}/{first.name}", exc) from None
        probe = self._output_name(collection, f"{PROBE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        where = f"az://{self._out_container}/{probe}"
        try:
            blob = self._blob(self._out_container, probe)
            blob.upload_blob(b"probe", overwrite=True)
            blob.delete_blob()
        except AzureError as exc:
            raise self._error(f"cannot write {where}", exc, self._out_container) from None

    def describe(self) -> str:
        return redact(
            f"Azure Blob Storage {self.auth.describe()}, container {self.container!r}, "
            f"prefix {self.prefix!r}",
            self.auth.secret,
        )

    def output_location(self, collection: str) -> str:
        return f"az://{self._out_container}/{self.output_dir(collection)}"

    # -- listing --------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        if self.collections is not None:
            return list(self.collections)
        from azure.core.exceptions import AzureError
        from azure.storage.blob import BlobPrefix

        base = self.prefix + "/" if self.prefix else ""
        skip = None
        if self._out_container == self.container and self._out_prefix != self.prefix:
            rest = self._out_prefix[len(base):] if self._out_prefix.startswith(base) else ""
            skip = rest.split("/")[0] or None
        found = []
        try:
            client = self._rt().service.get_container_client(self.container)
            for item in client.walk_blobs(name_starts_with=base, delimiter="/"):
                if not isinstance(item, BlobPrefix):
                    continue
                name = item.name[len(base):].strip("/")
                if name and not name.startswith(".") and not name.endswith(DEDUP_SUFFIX) and name != skip:
                    found.append(name)
        except AzureError as exc:
            raise self._error(f"cannot list collections of {self.describe()}", exc) from None
        return sorted(found)

    def iter_blobs(self, collection: str) -> Iterator[BlobInfo]:
        """Page by page (``limits.page_size`` blobs), never the whole listing at once.

        Blobs with an image extension or an ``image/*`` content type are images; others are
        sniffed by a ranged read of their first bytes (concurrently, within a page).
        """
        from azure.core.exceptions import AzureError

        base = self.source_prefix(collection) + "/"
        out = self.output_dir(collection) + "/" if self._out_container == self.container else None
        client = self._rt().service.get_container_client(self.container)
        pages = client.list_blobs(name_starts_with=base, results_per_page=self.limits.page_size)
        with ThreadPoolExecutor(self.limits.max_concurrency, thread_name_prefix="az-sniff") as pool:
            try:
                for page in pages.by_page():
                    infos = self._page_infos(page, base, out, pool)
                    del page  # the SDK's objects (~9 KB a blob) go; the compact rows stay
                    yield from infos
            except AzureError as exc:
                raise self._error(f"cannot list collection {collection!r}", exc) from None

    def _page_infos(self, page, base: str, out: str | None, pool) -> list[BlobInfo]:
        items = [
            b for b in page if not b.name.endswith("/") and not (out and b.name.startswith(out))
        ]
        todo = [b for b in items if self._needs_sniff(b)]
        keep = dict(zip((b.name for b in todo), pool.map(self._sniff, todo)))
        return [
            BlobInfo(
                path=b.name[len(base):],
                size=int(b.size or 0),
                etag=(b.etag or "").strip('"'),
                last_modified=b.last_modified.timestamp() if b.last_modified else 0.0,
                content_md5=_md5_hex(b),
            )
            for b in items
            if keep.get(b.name, True)
        ]

    @staticmethod
    def _needs_sniff(b) -> bool:
        if PurePosixPath(b.name).suffix.lower() in IMAGE_EXTENSIONS:
            return False
        ctype = (b.content_settings.content_type or "") if b.content_settings else ""
        return not ctype.lower().startswith("image/")

    def _sniff(self, b) -> bool:
        """Is this extension-less blob an image? Empty ones are not; unreadable ones are kept."""
        if not b.size:
            return False
        rt = self._rt()
        try:
            with rt.slots:
                head = (
                    self._blob(self.container, b.name)
                    .download_blob(offset=0, length=min(SNIFF_BYTES, b.size))
                    .readall()
                )
        except Exception:  # noqa: BLE001 - kept, so that the error is reported, not lost
            return True
        return looks_like_image(b.name, head)

    # -- reading ---------------------------------------------------------------------------

    def read_bytes(self, collection: str, path: str) -> bytes:
        """One blob's bytes, within the request slots and the byte budget of this process."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        rt = self._rt()
        blob = self._blob(self.container, self._source_name(collection, path))
        with rt.slots:
            try:
                with rt.budget.hold(self.limits.chunk_bytes):
                    stream = blob.download_blob(max_concurrency=1)
                if stream.size > self.limits.max_blob_bytes:
                    raise StoreError(
                        f"{path!r} is {stream.size} bytes, more than max_blob_bytes "
                        f"({self.limits.max_blob_bytes})"
                    )
                with rt.budget.hold(stream.size):
                    return stream.readall()
            except AzureError as exc:
                error = self._error(f"cannot read {path!r}", exc)
                if isinstance(exc, ResourceNotFoundError) and not isinstance(error, ConfigurationError):
                    error = StoreError(f"blob {path!r} not found in collection {collection!r}")
                raise error from None

    # -- copies ---------------------------------------------------------------------------

    def copy_to_output(
        self, collection: str, path: str, dest: str, content_hash: str, content_md5: str | None = None
    ) -> str:
        """Server-side copy (``start_copy_from_url``), verified; ``skipped`` when identical.

        The copy is conditional (destination absent, or unchanged since looked at; source
        unchanged), so a retried request whose first answer was lost never copies twice.
        Verification: when the source has a Content-MD5 (Azure sets one on single-shot
        uploads) and the inventory recorded it (``content_md5``), the source's must still be it
        and the copy's must equal it; otherwise the copy is downloaded and its content hash
        compared with ``content_hash``, then its MD5 and content hash are recorded on it (so a
        later run can skip it without downloading).
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            AzureError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )

        src = self._blob(self.container, self._source_name(collection, path))
        dst = self._blob(self._out_container, self._output_name(collection, dest))
        with self._rt().slots:
            try:
                sp = src.get_blob_properties()
                src_md5 = _md5_hex(sp)
                if src_md5 and content_md5 and src_md5 != content_md5:
                    raise StoreError(f"{path!r} changed since it was inventoried (Content-MD5 differs)")
                by_md5 = bool(src_md5 and content_md5)
                try:
                    dp = dst.get_blob_properties()
                except ResourceNotFoundError:
                    dp = None
                if dp is not None and dp.size == sp.size and (
                    _md5_hex(dp) == src_md5 if by_md5 else (dp.metadata or {}).get(HASH_METADATA) == content_hash
                ):
                    return "skipped"
                cond = (
                    {"match_condition": MatchConditions.IfMissing}
                    if dp is None
                    else {"etag": dp.etag, "match_condition": MatchConditions.IfNotModified}
                )
                try:
                    dst.start_copy_from_url(
                        src.url,
                        source_etag=sp.etag,
                        source_match_condition=MatchConditions.IfNotModified,
                        **cond,
                    )
                except (ResourceExistsError, ResourceModifiedError):
                    pass  # an earlier attempt of this request may have won: verified below
                self._wait_and_verify(dst, sp.size, src_md5 if by_md5 else None, content_hash, path)
            except ResourceNotFoundError as exc:
                raise self._error(f"cannot copy {path!r}", exc, self._out_container) from None
            except AzureError as exc:
                raise self._error(f"cannot copy {path!r} to {dest!r}", exc, self._out_container) from None
        return "copied"

    def _wait_and_verify(self, dst, size: int, md5: str | None, content_hash: str, path: str) -> None:
        """Wait for a pending copy, then check its status, size and content: by its Content-MD5
        (``md5``), else by downloading it (see :meth:`copy_to_output`)."""
        from azure.storage.blob import ContentSettings

        deadline = time.monotonic() + self.limits.copy_timeout
        props = dst.get_blob_properties()
        while props.copy and props.copy.status == "pending":
            if time.monotonic() > deadline:
                try:
                    dst.abort_copy(props.copy.id)
                except Exception:  # noqa: BLE001 - the timeout is the error to report
                    pass
                raise StoreError(f"copy of {path!r} did not finish within copy_timeout")
            time.sleep(0.5)
            props = dst.get_blob_properties()
        if props.copy and props.copy.status in ("failed", "aborted"):
            raise StoreError(f"copy of {path!r} {props.copy.status}: {props.copy.status_description}")
        if props.size != size:
            raise StoreError(f"copy of {path!r} has {props.size} bytes, the source {size}")
        if md5 is not None:
            if _md5_hex(props) != md5:
                raise StoreError(f"copy of {path!r} does not match the source's Content-MD5")
            return
        data = dst.download_blob().readall()
        if content_hash_of(data) != content_hash:
            raise StoreError(f"copy of {path!r} does not match its content hash (source changed?)")
        cs = props.content_settings or ContentSettings()
        cs.content_md5 = bytearray(hashlib.md5(data).digest())
        dst.set_http_headers(content_settings=cs)
        dst.set_blob_metadata({**(props.metadata or {}), HASH_METADATA: content_hash})

    def copy_many(self, collection: str, items: Iterable[tuple[str, str, str, str | None]]) -> Iterator[str]:
        """Copies on ``limits.max_concurrency`` threads, results in the order given."""
        pending: deque[Future[str]] = deque()
        limit = 2 * self.limits.max_concurrency
        with ThreadPoolExecutor(self.limits.max_concurrency, thread_name_prefix="az-copy") as pool:
            for path, dest, chash, md5 in items:
                pending.append(pool.submit(self.copy_to_output, collection, path, dest, chash, md5))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    # -- outputs ----------------------------------------------------------------------------

    def write_output(self, collection: str, name: str, data: bytes) -> str:
        from azure.core.exceptions import AzureError
        from azure.storage.blob import ContentSettings

        full = self._output_name(collection, name)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        settings = ContentSettings(
            content_type=ctype, content_md5=bytearray(hashlib.md5(data).digest())
        )
        try:
            with self._rt().slots:
                self._blob(self._out_container, full).upload_blob(
                    data, overwrite=True, content_settings=settings, max_concurrency=4
                )
        except AzureError as exc:
            raise self._error(f"cannot write {name!r}", exc, self._out_container) from None
        return f"az://{self._out_container}/{full}"

    def read_output(self, collection: str, name: str) -> bytes:
        from azure.core.exceptions import AzureError

        full = _join(self.output_dir(collection), *_safe_relative(name).parts)
        try:
            with self._rt().slots:
                return self._blob(self._out_container, full).download_blob().readall()
        except AzureError as exc:
            raise self._error(f"cannot read output {name!r}", exc, self._out_container) from None

    def list_outputs(self, collection: str, folder: str) -> list[str]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        base = self.output_dir(collection) + "/"
        top = base + "/".join(_safe_relative(folder).parts) + "/"
        client = self._rt().service.get_container_client(self._out_container)
        try:
            return sorted(
                b.name[len(base):]
                for b in client.list_blobs(name_starts_with=top, results_per_page=self.limits.page_size)
            )
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise self._error(f"cannot list outputs of {collection!r}", exc, self._out_container) from None

    def delete_output(self, collection: str, dest: str) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        full = self._output_name(collection, dest)
        try:
            with self._rt().slots:
                self._blob(self._out_container, full).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError:
            pass  # already gone (or an earlier attempt of this request deleted it)
        except AzureError as exc:
            raise self._error(f"cannot delete output {dest!r}", exc, self._out_container) from None
