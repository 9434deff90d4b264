"""The Azure Blob store end to end against Azurite (the real Blob API on loopback), with and
without faults injected between the SDK and Azurite."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import time
from pathlib import Path

import polars as pl
import pytest
from azure.storage.blob import BlobServiceClient
from dagster import DagsterInstance, EnvVar, build_sensor_context, materialize
from dagster_azure.blob import (
    AzureBlobStorageKeyCredential,
    AzureBlobStorageResource,
    AzureBlobStorageSASTokenCredential,
)
from PIL import Image

from dedup_assets.assets import ALL_ASSETS
from dedup_assets.runner import materialize_collection
from dedup_assets.cli import main
from dedup_assets.core.azure_retry import THROTTLE
from dedup_assets.core.content import content_hash
from dedup_assets.core.azure_store import (
    AZURITE_KEY,
    AzureAuth,
    AzureBlobStore,
    AzureLimits,
    parse_az_url,
    redact,
)
from dedup_assets.core.report import COPY_FOLDERS, REPORT_NAME
from dedup_assets.core.sample import load_photo, make_sample_collection
from dedup_assets.core.store import StoreError
from dedup_assets.definitions import build_resources, store_from_env
from dedup_assets.partitions import collections_partitions
from dedup_assets.resources import AzureBlobStoreResource
from dedup_assets.sensors import collection_discovery_sensor

from fault_proxy import FAULTS, FaultProxy

COLLECTION = "photos"
SOURCE = "source"
FAST_RETRY = dict(retry_backoff_s=0.02, retry_backoff_max_s=0.2)


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def build_tree(root: Path) -> None:
    """The sample collection plus names that are hard for blob storage."""
    make_sample_collection(root)
    rocket = load_photo("rocket")
    extra = {
        "Ferien 2024/Strand café.jpg": _jpeg(rocket.resize((rocket.width * 3 // 4, rocket.height * 3 // 4))),
        "日本/IMG 0001.jpg": _jpeg(load_photo("coins")),
        "other/IMG 0001.jpg": _jpeg(load_photo("camera"), quality=70),  # same name, other folder
        "raw/IMG_0002": _jpeg(load_photo("retina").rotate(180)),  # an image without extension
        "notes/LICENSE": b"plain text without an extension: not an image\n",
    }
    for rel, data in extra.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _source_etags(service: BlobServiceClient) -> dict[str, str]:
    return {
        b.name: b.etag
        for b in service.get_container_client(SOURCE).list_blobs(name_starts_with=COLLECTION + "/")
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree") / COLLECTION
    build_tree(root)
    return root


@pytest.fixture(scope="module")
def service(azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string())


@pytest.fixture(scope="module")
def uploaded(azurite, service, tree) -> dict[str, str]:
    """The tree uploaded under source/photos/ (and another collection beside it)."""
    for name in (SOURCE, "results", "faulty-out", "cli-out"):
        service.create_container(name)
    container = service.get_container_client(SOURCE)
    for rel, data in sorted(_files(tree).items()):
        container.upload_blob(f"{COLLECTION}/{rel}", data)
    container.upload_blob("others/x.jpg", _jpeg(load_photo("coffee")))
    return _source_etags(service)


@pytest.fixture(scope="module")
def local_run(tree, tmp_path_factory):
    """The reference: the same files deduplicated from a local folder."""
    out = tmp_path_factory.mktemp("local-out")
    instance = DagsterInstance.ephemeral()
    resources = build_resources(
        source_root=str(tree.parent), output_root=str(out), database=str(out / "local.duckdb")
    )
    result = materialize_collection(instance, COLLECTION, resources, op_config=_op_config())
    assert result.success
    dedup = out / f"{COLLECTION}_deduplicated"
    return (dedup / REPORT_NAME).read_text(), _files(dedup)


@pytest.fixture(scope="module")
def env(azurite):
    """The documented environment variables, as a user would set them (restored afterwards)."""
    saved = dict(os.environ)
    os.environ.update(
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string(),
        AZURE_STORAGE_KEY=AZURITE_KEY,
        DEDUP_AZURE_RETRY_BACKOFF_S="0.02",
    )
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


def _op_config(stage1_workers: int = 1) -> dict:
    """Inline stages (fast) unless stage 1 is asked to read in worker processes."""
    workers = {"wavelet_hashes": stage1_workers, "global_groups": 1, "local_groups": 1, "review_gallery": 1}
    # a blob's last-modified time is its upload time, not the file's: the keeper's "oldest file"
    # tie preference would compare different times in the two stores
    return {op: {"workers": n} for op, n in workers.items()} | {"best_selection": {"prefer_oldest": False}}


COPY_STAGES = [a for a in ALL_ASSETS if a.key.path[-1] in ("deduplicated_files", "image_report")]


def _run_azure(store: AzureBlobStoreResource, db: Path, *, stage1_workers=1, only_copies=False):
    """Materialise the graph (or only its output stages, the rest read back from DuckDB)."""
    instance = DagsterInstance.ephemeral()
    resources = build_resources(store=store, database=str(db))
    if only_copies:
        instance.add_dynamic_partitions(collections_partitions.name, [COLLECTION])
        result = materialize(
            ALL_ASSETS,
            selection=COPY_STAGES,
            partition_key=COLLECTION,
            resources=resources,
            instance=instance,
        )
    else:
        result = materialize_collection(
            instance, COLLECTION, resources, op_config=_op_config(stage1_workers)
        )
    assert result.success
    return result, instance


def _outputs(store: AzureBlobStore) -> dict[str, bytes]:
    names = [n for folder in (*COPY_FOLDERS, "gallery") for n in store.list_outputs(COLLECTION, folder)]
    return {n: store.read_output(COLLECTION, n) for n in names} | {
        REPORT_NAME: store.read_output(COLLECTION, REPORT_NAME)
    }


def _check_report(azure_report: bytes, local_report: str, source: dict[str, bytes]) -> None:
    """The local run's report but for Content MD5, which only Azure keeps: each file's MD5."""
    azure = pl.read_csv(io.BytesIO(azure_report), infer_schema=False)
    local = pl.read_csv(io.BytesIO(local_report.encode()), infer_schema=False)
    assert azure.drop("Content MD5").equals(local.drop("Content MD5"))
    assert local["Content MD5"].null_count() == local.height
    assert azure.select("Image Path", "Content MD5").rows() == [
        (p, hashlib.md5(source[p]).hexdigest()) for p in azure["Image Path"]
    ]


def _check_same_as_local(store: AzureBlobStore, local_run, tree: Path) -> None:
    local_report, local_files = local_run
    outputs = _outputs(store)
    source = _files(tree)
    _check_report(outputs[REPORT_NAME], local_report, source)
    assert set(outputs) == set(local_files)
    assert any(n.startswith("gallery/") for n in outputs)  # the review gallery, written through the store
    for name, data in outputs.items():
        if name.startswith("gallery/"):
            assert data == local_files[name], name
        elif name != REPORT_NAME:
            assert data == source[name.split("/", 1)[1]] == local_files[name], name


def _copied(result) -> dict:
    meta = result.asset_materializations_for_node("deduplicated_files")[0].metadata
    return {k: meta[k].value for k in ("copied", "skipped_identical", "stale_removed")}


def test_azure_run_matches_local_run(env, azurite, service, uploaded, local_run, tree, tmp_path):
    local_report = local_run[0]
    assert "raw/IMG_0002" in local_report and "日本/IMG 0001.jpg" in local_report
    assert "Ferien 2024/Strand café.jpg" in local_report and "notes/LICENSE" not in local_report
    store = AzureBlobStoreResource(
        connection_string=EnvVar("AZURE_STORAGE_CONNECTION_STRING"),
        container=SOURCE,
        output_container="results",
        **FAST_RETRY,
    )
    result, instance = _run_azure(store, tmp_path / "az.duckdb")
    _check_same_as_local(AzureBlobStore(azurite.auth(), SOURCE, output_container="results"), local_run, tree)
    rows = local_report.count("\n") - 1
    assert _copied(result)["copied"] == rows - local_report.count(",Error,")
    # the source is untouched: same blobs, same etags
    assert _source_etags(service) == uploaded
    # the inventory carries Azure's Content-MD5 and etags
    inv = result.asset_materializations_for_node("blob_inventory")[0].metadata
    assert inv["images"].value == rows
    # no secret anywhere in the runs' events or their stored config (inventory, shards, rest)
    for run_id in result.run_ids:
        events = instance.all_logs(run_id)
        text = "\n".join(str(e) for e in events) + str(instance.get_run_by_id(run_id).run_config)
        assert AZURITE_KEY not in text and AZURITE_KEY[:20] not in text
    # a re-run copies nothing
    again, _ = _run_azure(store, tmp_path / "az.duckdb", only_copies=True)
    assert _copied(again) == {"copied": 0, "skipped_identical": rows - local_report.count(",Error,"), "stale_removed": 0}


def test_faulty_network_same_results_no_loss_no_double_copy(env, azurite, service, uploaded, local_run, tree, tmp_path):
    with FaultProxy(azurite.port, failure_rate=0.2, seed=5) as proxy:
        store = AzureBlobStoreResource(
            azure=AzureBlobStorageResource(
                account_url=azurite.url_on(proxy.port),
                credential=AzureBlobStorageKeyCredential(key=EnvVar("AZURE_STORAGE_KEY")),
            ),
            container=SOURCE,
            output_container="faulty-out",
            **FAST_RETRY,
        )
        proxy.script = list(FAULTS)  # every kind of fault at least once, then 20 % at random
        start = time.perf_counter()
        result, _ = _run_azure(store, tmp_path / "faulty.duckdb", stage1_workers=2)
        seconds = time.perf_counter() - start
        faults, requests = sum(proxy.injected.values()), proxy.requests
        assert faults >= 0.1 * requests and set(proxy.injected) == set(FAULTS)
        copies = proxy.effective_copies()
        checker = AzureBlobStore(
            azurite.auth(proxy.port), SOURCE, output_container="faulty-out",
            limits=AzureLimits(retry_backoff=0.02),
        )
        _check_same_as_local(checker, local_run, tree)  # (read through the faulty proxy too)
        n_copies = _copied(result)["copied"]
        assert len(copies) == n_copies and set(copies.values()) == {1}, copies
        print(f"\nfaulty run: {requests} requests, {faults} faults {dict(proxy.injected)}, {seconds:.1f} s")

        proxy.reset_counts()
        again, _ = _run_azure(store, tmp_path / "faulty.duckdb", only_copies=True)
        assert _copied(again)["copied"] == 0 and _copied(again)["skipped_identical"] == n_copies
        assert not proxy.effective_copies()
        assert sum(proxy.injected.values()) > 0
    assert _source_etags(service) == uploaded


def test_cli_az_url(env, azurite, service, uploaded, local_run, tree, tmp_path, capsys, monkeypatch):
    state = tmp_path / "state"
    import dedup_assets.cli as cli

    real = cli.run_azure_collection
    same_ties = {"ops": {"best_selection": {"config": {"prefer_oldest": False}}}}  # see _op_config
    monkeypatch.setattr(cli, "run_azure_collection", lambda *a, **k: real(*a, **k, run_config=same_ties))
    args = ["run", f"az://{SOURCE}/{COLLECTION}", "--output", "az://cli-out/results/2024"]
    assert main(args + ["--state", str(state), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "report:     az://cli-out/results/2024/photos_deduplicated/image_report.csv" in printed
    assert (state / "dedup_assets.duckdb").exists()
    report = service.get_blob_client("cli-out", "results/2024/photos_deduplicated/image_report.csv")
    _check_report(report.download_blob().readall(), local_run[0], _files(tree))
    assert AZURITE_KEY not in printed
    assert _source_etags(service) == uploaded
    with pytest.raises(SystemExit, match="inside the source"):
        main(["run", f"az://{SOURCE}/{COLLECTION}", "--output", f"az://{SOURCE}/{COLLECTION}/out"])
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    with pytest.raises(SystemExit, match="AZURE_STORAGE_CONNECTION_STRING"):
        main(["run", f"az://{SOURCE}/{COLLECTION}"])


def test_env_selects_azure_and_sensor_discovers_prefixes(env, azurite, uploaded, monkeypatch):
    monkeypatch.setenv("DEDUP_STORE", "azure")
    monkeypatch.setenv("DEDUP_AZURE_CONTAINER", SOURCE)
    for conn in (True, False):
        if not conn:  # account URL + key through dagster-azure's resource
            monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
            monkeypatch.setenv("DEDUP_AZURE_ACCOUNT_URL", azurite.url)
        resource = store_from_env()
        assert isinstance(resource, AzureBlobStoreResource) and (resource.azure is None) == conn
        with build_sensor_context(
            instance=DagsterInstance.ephemeral(), resources={"store": resource}
        ) as ctx:
            [request] = collection_discovery_sensor(ctx).dynamic_partitions_requests
        assert sorted(request.partition_keys) == ["others", "photos"]
    monkeypatch.setenv("DEDUP_AZURE_COLLECTIONS", "photos")
    with store_from_env().process_config_and_initialize_cm() as ready:  # EnvVars resolved
        assert ready.get_store().list_collections() == ["photos"]


def test_store_details(azurite, service, uploaded):
    auth = azurite.auth()
    store = AzureBlobStore(auth, SOURCE, limits=AzureLimits(retry_backoff=0.02, page_size=7))
    # listing is paged (7 per page here) and complete; sniffing finds the extension-less JPEG
    paths = [b.path for b in store.iter_blobs(COLLECTION)]
    assert "raw/IMG_0002" in paths and "notes/LICENSE" not in paths and len(paths) == len(set(paths))
    assert all(b.content_md5 and b.etag for b in store.iter_blobs(COLLECTION))
    # picklable for worker processes; secrets stay out of repr, describe and locations
    clone = pickle.loads(pickle.dumps(store))
    assert clone.read_bytes(COLLECTION, "raw/IMG_0002")[:3] == b"\xff\xd8\xff"
    for text in (repr(store), store.describe(), store.output_location(COLLECTION)):
        assert AZURITE_KEY not in text
    # the source is guarded even against a misconfigured output prefix
    inside = AzureBlobStore(auth, SOURCE, output_prefix=f"{COLLECTION}/x")
    with pytest.raises(StoreError, match="source collection"):
        inside.write_output(COLLECTION, REPORT_NAME, b"x")
    with pytest.raises(StoreError, match="not found"):
        store.read_bytes(COLLECTION, "missing.jpg")
    # wrong secrets: errors name the failure, never the secret
    sas = "sv=2024-08-04&ss=b&srt=sco&sp=rl&se=2030-01-01&sig=S3CRETsignature%3D"
    for bad in (
        AzureAuth(azurite.url, "sas", sas),
        AzureAuth(azurite.url, "key", "V1JPTkdLRVlWMUpQVGtkTFJWaz0=", "devstoreaccount1"),
    ):
        failing = AzureBlobStore(bad, SOURCE, limits=AzureLimits(retry_total=1, retry_backoff=0.01))
        with pytest.raises(StoreError) as err:
            failing.read_bytes(COLLECTION, "originals/coins.jpg")
        assert bad.secret not in str(err.value) and "S3CRET" not in str(err.value)
        assert "403" in str(err.value)
    assert redact(f"x?{sas} AccountKey=abc;", "abc") == "x?sv=2024-08-04&ss=b&srt=sco&sp=rl&se=2030-01-01&sig=*** AccountKey=***;"
    assert parse_az_url("az://my-container/a/b/") == ("my-container", "a/b")
    conn = AzureAuth.from_connection_string(azurite.connection_string())
    assert conn.kind == "key" and conn.account_url == azurite.url and "AccountKey" not in repr(conn)


def test_throttling_honours_retry_after(azurite, uploaded):
    with FaultProxy(azurite.port, retry_after=("Retry-After", "1")) as proxy:
        store = AzureBlobStore(
            azurite.auth(proxy.port), SOURCE, limits=AzureLimits(retry_backoff=0.01)
        )
        store.read_bytes(COLLECTION, "originals/coins.jpg")  # connection warm
        proxy.script = ["429", "503"]
        pauses = THROTTLE.pauses
        start = time.perf_counter()
        data = store.read_bytes(COLLECTION, "originals/coins.jpg")
        waited = time.perf_counter() - start
    assert data[:3] == b"\xff\xd8\xff" and proxy.injected == {"429": 1, "503": 1}
    assert 2.0 <= waited < 5.0 and THROTTLE.pauses == pauses + 2


def test_copy_whose_answer_is_lost_is_not_made_twice(azurite, service, uploaded):
    """The copy request reaches Azurite, its answer is lost, the SDK retries: one copy only."""

    data = service.get_blob_client(SOURCE, f"{COLLECTION}/originals/coins.jpg").download_blob().readall()
    md5, key = hashlib.md5(data).hexdigest(), content_hash(data)
    with FaultProxy(azurite.port) as proxy:
        store = AzureBlobStore(
            azurite.auth(proxy.port), SOURCE, output_container="results",
            output_prefix="lost", limits=AzureLimits(retry_backoff=0.01),
        )
        dest = "/devstoreaccount1/results/lost/photos_deduplicated/best/coins.jpg"
        # requests: source properties, destination properties, the copy, verification
        for fault in ("lost", "lost500"):
            if fault == "lost500":  # now the destination exists with other bytes: overwrite it
                service.get_blob_client("results", dest.split("/results/")[1]).upload_blob(
                    b"stale", overwrite=True
                )
            proxy.reset_counts()
            proxy.script = [None, None, fault]
            assert store.copy_to_output(COLLECTION, "originals/coins.jpg", "best/coins.jpg", key, md5) == "copied"
            statuses = [status for d, status in proxy.copies if d == dest]
            assert statuses[0] == 202 and len(statuses) == 2 and statuses[1] in (409, 412), statuses
            assert proxy.effective_copies() == {dest: 1}
        assert store.read_output(COLLECTION, "best/coins.jpg") == data
        proxy.reset_counts()
        assert store.copy_to_output(COLLECTION, "originals/coins.jpg", "best/coins.jpg", key, md5) == "skipped"
        assert not proxy.copies


def test_sas_credential_reads_and_copies(azurite, service, uploaded):
    """A SAS token (as dagster-azure's SAS credential gives it) lists, reads and copies."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    sas = generate_account_sas(
        "devstoreaccount1", AZURITE_KEY, ResourceTypes(container=True, object=True),
        AccountSasPermissions(read=True, list=True, write=True, create=True, delete=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    resource = AzureBlobStoreResource(
        azure=AzureBlobStorageResource(
            account_url=azurite.url, credential=AzureBlobStorageSASTokenCredential(token=sas)
        ),
        container=SOURCE, output_container="results", output_prefix="sas",
    )
    store = resource.get_store()
    assert store.auth.kind == "sas" and "sig=" not in store.describe()
    assert "raw/IMG_0002" in [b.path for b in store.iter_blobs(COLLECTION)]
    data = store.read_bytes(COLLECTION, "originals/coins.jpg")
    md5 = hashlib.md5(data).hexdigest()
    assert store.copy_to_output(COLLECTION, "originals/coins.jpg", "best/coins.jpg", content_hash(data), md5) == "copied"
    assert store.read_output(COLLECTION, "best/coins.jpg") == data


def test_copies_are_verified_by_md5_or_by_their_content_hash(azurite, service, uploaded):
    """A source with Content-MD5 (as Azure sets on uploads) is verified by it; one without is
    verified by downloading the copy and hashing it, which then records MD5 and content hash
    on the copy so the next run skips it; a changed source or a wrong hash is an error."""

    from azure.storage.blob import ContentSettings

    from dedup_assets.core.azure_store import HASH_METADATA, _md5_hex

    store = AzureBlobStore(azurite.auth(), SOURCE, output_container="results", output_prefix="verify")
    data = store.read_bytes(COLLECTION, "originals/coins.jpg")
    key, md5 = content_hash(data), hashlib.md5(data).hexdigest()
    # the inventory's MD5 differs from the source's now: changed since inventoried
    with pytest.raises(StoreError, match="changed since it was inventoried"):
        store.copy_to_output(COLLECTION, "originals/coins.jpg", "best/a.jpg", key, "0" * 32)
    assert "best/a.jpg" not in store.list_outputs(COLLECTION, "best")
    assert store.copy_to_output(COLLECTION, "originals/coins.jpg", "best/a.jpg", key, md5) == "copied"
    assert store.copy_to_output(COLLECTION, "originals/coins.jpg", "best/a.jpg", key, md5) == "skipped"

    # a source blob without Content-MD5 (block uploads have none)
    name = f"{COLLECTION}/nomd5/coins.jpg"
    blob = service.get_blob_client(SOURCE, name)
    blob.upload_blob(data, overwrite=True)
    blob.set_http_headers(content_settings=ContentSettings(content_type="image/jpeg"))
    assert _md5_hex(blob.get_blob_properties()) is None
    with pytest.raises(StoreError, match="does not match its content hash"):
        store.copy_to_output(COLLECTION, "nomd5/coins.jpg", "best/b.jpg", "f" * 32, None)
    assert store.copy_to_output(COLLECTION, "nomd5/coins.jpg", "best/b.jpg", key, None) == "copied"
    copy = service.get_blob_client("results", store._output_name(COLLECTION, "best/b.jpg")).get_blob_properties()
    assert _md5_hex(copy) == md5 and copy.metadata[HASH_METADATA] == key
    assert store.copy_to_output(COLLECTION, "nomd5/coins.jpg", "best/b.jpg", key, None) == "skipped"
    assert store.read_output(COLLECTION, "best/b.jpg") == data
    blob.delete_blob()
