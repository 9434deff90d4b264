"""Dagster resources: the image store and the global-embedding model.

Thin wrappers: the real work lives in :mod:`dedup_assets.core`.
"""


from abc import ABC, abstractmethod

import polars as pl
from dagster import ConfigurableResource
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from .core import overrides
from .core.embeddings import Embedder, load_embedder
from .core.store import ImageStore, LocalFolderStore, StoreError, collection_slug


class ImageStoreResource(ConfigurableResource, ABC):
    """Where collections are read from and results written to."""

    @abstractmethod
    def get_store(self) -> ImageStore: ...

    def resolve_collection(self, partition_key: str) -> str:
        """The real prefix of the collection whose partition key is ``partition_key``."""
        store = self.get_store()
        matches = [c for c in store.list_collections() if collection_slug(c) == partition_key]
        if not matches:
            raise StoreError(
                f"no collection with partition key {partition_key!r} in {store.describe()}"
            )
        return matches[0]


class LocalFolderStoreResource(ImageStoreResource):
    """Collections are the sub-folders of ``root``; results go to ``output_root``."""

    root: str = Field(description="Folder whose sub-folders are the collections.")
    output_root: str | None = Field(
        default=None,
        description="Folder receiving <collection>_deduplicated/ (default: root).",
    )

    def get_store(self) -> ImageStore:
        return LocalFolderStore(self.root, self.output_root)


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
    precision: str = Field(default="auto", description="auto, fp32, bf16 or fp16.")
    batch_size: int = Field(default=32)
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
                allow_random_weights=self.allow_random_weights,
                cache_dir=self.cache_dir,
            )
        return self._embedder


class OverridesResource(DuckDBResource):
    """The analysts' ``overrides`` table in the results database (created when missing)."""

    schema_name: str = Field(default="dedup", description="Schema holding the overrides table.")

    def load(self, collection: str) -> pl.DataFrame:
        """The collection's overrides, latest row per pair (see :mod:`dedup_assets.core.overrides`)."""
        from .io_manager import locked_connection  # the same writer lock as the IO manager

        with locked_connection(self.database) as (con, _):
            return overrides.load_overrides(con, collection, self.schema_name)
