"""Dagster resources: the image store and the global-embedding model.

Thin wrappers: the real work lives in :mod:`dedup_assets.core`.
"""


from abc import ABC, abstractmethod

from urllib.parse import urlsplit

import polars as pl
from dagster import ConfigurableResource
from dagster_azure.blob import AzureBlobStorageResource
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from .core import overrides
from .core.azure_store import MiB, AzureAuth, AzureBlobStore, AzureLimits, strip_query
from .core.embeddings import Embedder, load_embedder
from .core.store import ConfigurationError, ImageStore, LocalFolderStore, collection_slug


class ImageStoreResource(ConfigurableResource, ABC):
    """Where collections are read from and results written to."""

    @abstractmethod
    def get_store(self) -> ImageStore: ...

    def resolve_collection(self, partition_key: str) -> str:
        """The real prefix of the collection whose partition key is ``partition_key``, once
        the store's :meth:`~dedup_assets.core.store.ImageStore.preflight` says it can be read
        and its output written (every asset using the store calls this first, so a mistake
        fails in seconds with a :class:`ConfigurationError`)."""
        store = self.get_store()
        matches = [c for c in store.list_collections() if collection_slug(c) == partition_key]
        if not matches:
            raise ConfigurationError(
                f"no collection with partition key {partition_key!r} in {store.describe()}"
            )
        store.preflight(matches[0])
        return matches[0]


class LocalFolderStoreResource(ImageStoreResource):
    """Collections are the sub-folders of `root`; results go to `output_root`."""

    root: str = Field(description="Folder whose sub-folders are the collections.")
    output_root: str | None = Field(
        default=None,
        description="Folder receiving `<collection>_deduplicated/` (default: root).",
    )

    def get_store(self) -> ImageStore:
        return LocalFolderStore(self.root, self.output_root)


class AzureBlobStoreResource(ImageStoreResource):
    """Collections are prefixes of one Azure Blob Storage container.

    The account is given by dagster-azure's `AzureBlobStorageResource` (account URL with a
    key, a SAS token or DefaultAzureCredential) or by an Azure Storage connection string.
    A collection is a top-level prefix below `prefix` (`<prefix>/<collection>/`), or one
    of `collections` when that list is given. The limits hold per process.
    """

    azure: AzureBlobStorageResource | None = Field(
        default=None, description="Account URL and credential (dagster-azure)."
    )
    connection_string: str | None = Field(
        default=None,
        description="Azure Storage connection string (AZURE_STORAGE_CONNECTION_STRING); "
        "takes precedence over `azure`.",
    )
    container: str = Field(description="Container holding the collections.")
    prefix: str = Field(default="", description="Prefix whose top-level prefixes are collections.")
    collections: list[str] | None = Field(
        default=None, description="Collections (below `prefix`) instead of discovering them."
    )
    output_container: str | None = Field(
        default=None, description="Container receiving `<collection>_deduplicated/` (default: container)."
    )
    output_prefix: str | None = Field(
        default=None, description="Prefix in the output container (default: `prefix`)."
    )
    max_concurrency: int = Field(default=16, description="Requests in flight per process.")
    max_mb_in_flight: int = Field(default=256, description="MiB of downloads in memory per process.")
    max_blob_mb: int = Field(default=1024, description="Larger blobs are reported as errors.")
    page_size: int = Field(default=1000, description="Blobs per listing page (memory ~15 KB per blob of a page).")
    retry_total: int = Field(default=10, description="Retries per request.")
    retry_backoff_s: float = Field(default=1.0, description="First retry backoff (doubles, jittered).")
    retry_backoff_max_s: float = Field(default=60.0, description="Longest backoff between retries.")
    retry_total_timeout_s: float = Field(
        default=300.0, description="Longest time one request may spend in retries."
    )
    copy_timeout_s: float = Field(default=900.0, description="Longest wait for one server-side copy.")

    def auth(self) -> AzureAuth:
        if self.connection_string:
            return AzureAuth.from_connection_string(self.connection_string)
        if self.azure is None:
            raise ConfigurationError(
                "the Azure store needs `azure` (account URL + credential) or a connection string"
            )
        url, cred = self.azure.account_url, self.azure.credential
        kind = cred.credential_type
        if kind == "key":
            return AzureAuth(strip_query(url), "key", cred.key)
        if kind == "sas":
            return AzureAuth(strip_query(url), "sas", cred.token)
        if urlsplit(url).query:  # a SAS token in the account URL
            return AzureAuth(strip_query(url), "sas", urlsplit(url).query)
        if kind == "default_azure_credential":
            return AzureAuth(url, "default", options=tuple(sorted(cred.kwargs.items())))
        return AzureAuth(url, "anonymous")

    def limits(self) -> AzureLimits:
        return AzureLimits(
            max_concurrency=self.max_concurrency,
            max_bytes_in_flight=self.max_mb_in_flight * MiB,
            max_blob_bytes=self.max_blob_mb * MiB,
            page_size=self.page_size,
            retry_total=self.retry_total,
            retry_backoff=self.retry_backoff_s,
            retry_backoff_max=self.retry_backoff_max_s,
            retry_total_timeout=self.retry_total_timeout_s,
            copy_timeout=self.copy_timeout_s,
        )

    def get_store(self) -> ImageStore:
        return AzureBlobStore(
            self.auth(),
            self.container,
            prefix=self.prefix,
            output_container=self.output_container,
            output_prefix=self.output_prefix,
            collections=tuple(self.collections) if self.collections else None,
            limits=self.limits(),
        )


class EmbedderResource(ConfigurableResource):
    """The global-embedding model (open_clip), with the weight-free fallback."""

    model_name: str = Field(default="ViT-B-32", description="open_clip model name.")
    pretrained: str = Field(
        default="openai",
        description="open_clip pretrained tag, loaded from the open_clip cache only (never downloaded).",
    )
    checkpoint_path: str | None = Field(
        default=None, description="Local checkpoint file; takes precedence over `pretrained`."
    )
    cache_dir: str | None = Field(default=None, description="open_clip / HF cache folder.")
    device: str = Field(default="auto", description="auto, cpu, cuda or mps.")
    precision: str = Field(
        default="auto",
        description="auto (fp16 on CUDA, bf16 on a CPU with AMX/AVX512-BF16, kept only if cosine "
        ">= 0.999 to fp32 on a probe batch; else fp32), fp32, bf16 or fp16.",
    )
    batch_size: int = Field(
        default=64,
        description="Images per model call (bf16 on 2 CPU cores: 64 and 128 run ~1.5x faster per "
        "image than 32).",
    )
    threads: int = Field(default=0, description="torch threads for the model (0: torch's default).")
    allow_random_weights: bool = Field(
        default=False, description="Use randomly initialised weights (tests only)."
    )

    _embedder: Embedder | None = PrivateAttr(default=None)

    def get_embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(
                model_name=self.model_name,
                pretrained=self.pretrained,
                checkpoint_path=self.checkpoint_path,
                device=self.device,
                precision=self.precision,
                batch_size=self.batch_size,
                threads=self.threads or None,
                allow_random_weights=self.allow_random_weights,
                cache_dir=self.cache_dir,
            )
        return self._embedder


class OverridesResource(DuckDBResource):
    """The analysts' `overrides` table in the results database (created when missing)."""

    schema_name: str = Field(default="dedup", description="Schema holding the overrides table.")

    def load(self, collection: str) -> pl.DataFrame:
        """The collection's overrides, latest row per pair (see :mod:`dedup_assets.core.overrides`)."""
        from .io_manager import locked_connection  # the same writer lock as the IO manager

        with locked_connection(self.database) as (con, _):
            return overrides.load_overrides(con, collection, self.schema_name)
