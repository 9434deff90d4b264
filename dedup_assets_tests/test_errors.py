"""Errors are classified: a setting or a permission to fix fails in seconds with one line and
is never retried; a transient failure is retried with a warning per retry, within a time bound.

Real parts only: Azurite (wrong key, missing containers, a SAS without some permission), a
fault-injecting proxy in front of it (5xx answers), a closed port (an outage), a ``.invalid``
host (never resolves, needs no network), a read-only path (a regular file where a folder
should be: root ignores permission bits, not that), Dagster materialisations and the CLI.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from azure.storage.blob import (
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)
from dagster import DagsterEventType, DagsterInstance, materialize

from dedup_assets.assets import blob_inventory
from dedup_assets.azurite import free_port
from dedup_assets.cli import main, report_failure
from dedup_assets.core.azure_store import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    AzureAuth,
    AzureBlobStore,
    AzureLimits,
)
from dedup_assets.core.stage1 import analyse_path
from dedup_assets.core.store import ConfigurationError, StoreError
from dedup_assets.io_manager import DedupDuckDBIOManager
from dedup_assets.partitions import collections_partitions
from dedup_assets.resources import LocalFolderStoreResource

from fault_proxy import FaultProxy

SRC = "errors-src"
OUT = "errors-out"
COLLECTION = "photos"
WRONG_KEY = "V1JPTkdLRVlWMUpQVGtkTFJWaz0="  # valid base64, not the account's key
#: A configuration mistake must fail within this (seconds); the default retry settings (10
#: retries, backoff from 1 s doubling to 60 s) would take minutes if it were retried.
FAST = 5.0


@pytest.fixture(scope="module")
def service(azurite) -> BlobServiceClient:
    svc = BlobServiceClient.from_connection_string(azurite.connection_string())
    for name in (SRC, OUT):
        svc.create_container(name)
    src = svc.get_container_client(SRC)
    src.upload_blob(f"{COLLECTION}/a.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    src.upload_blob(f"{COLLECTION}/b.jpg", b"\xff\xd8\xff\xe0 nor this one")
    return svc


def _sas(permission: ContainerSasPermissions, container: str = SRC) -> str:
    return generate_container_sas(
        AZURITE_ACCOUNT, container, account_key=AZURITE_KEY, permission=permission,
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )


def _fails_fast(store: AzureBlobStore, match: str) -> ConfigurationError:
    start = time.perf_counter()
    with pytest.raises(ConfigurationError, match=match) as err:
        store.preflight(COLLECTION)
    assert time.perf_counter() - start < FAST
    text = str(err.value)
    assert "\n" not in text and AZURITE_KEY not in text and WRONG_KEY not in text
    return err.value


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "conn, match",
    [
        ("not a connection string", "malformed: item 1 of 1"),
        # the key pasted without its name: never echoed (it ends with '=', like a setting)
        (f"DefaultEndpointsProtocol=https;AccountName=acct;{AZURITE_KEY}", "malformed: item 3 of 3"),
        ("DefaultEndpointsProtocol=https;AccountName=acct", "neither AccountKey nor SharedAccessSignature"),
        (f"AccountKey={AZURITE_KEY}", "neither AccountName nor BlobEndpoint"),
        ("AccountName=acct;AccountKey=not-a-key!", "not valid base64"),
        (f"DefaultEndpointsProtocol=htps;AccountName=acct;AccountKey={AZURITE_KEY}", "is not https://"),
    ],
)
def test_connection_string_mistakes_say_what_to_fix(conn, match):
    with pytest.raises(ConfigurationError, match=match) as err:
        AzureAuth.from_connection_string(conn)
    assert AZURITE_KEY not in str(err.value) and "not-a-key" not in str(err.value)


def test_unresolvable_account_fails_in_seconds_without_retries(caplog):
    """DNS says "no such name" for the account's host: the account or endpoint is wrong. With
    the default retry settings this used to be retried for minutes (24 min through Dagster)."""
    auth = AzureAuth("https://nosuchaccount.blob.core.invalid", "key", AZURITE_KEY, "nosuchaccount")
    store = AzureBlobStore(auth, SRC, limits=AzureLimits())  # default retries: 10, 1 s .. 60 s
    with caplog.at_level(logging.WARNING, logger="dedup_assets"):
        err = _fails_fast(store, "nosuchaccount.blob.core.invalid does not exist")
    assert "check the account name or endpoint" in str(err)
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


# --------------------------------------------------------------------------- Azurite


def test_wrong_key_is_an_authentication_error(azurite, service):
    store = AzureBlobStore(AzureAuth(azurite.url, "key", WRONG_KEY, AZURITE_ACCOUNT), SRC)
    err = _fails_fast(store, "authentication to .* failed \\(403")
    assert "check the account key" in str(err)


def test_missing_containers_are_named(azurite, service):
    auth = azurite.auth()
    _fails_fast(AzureBlobStore(auth, "no-such-source"), "container 'no-such-source' does not exist")
    _fails_fast(
        AzureBlobStore(auth, SRC, output_container="no-such-results"),
        "cannot write az://no-such-results/.*container 'no-such-results' does not exist",
    )
    # a prefix with nothing below it is a typo, not an empty collection
    with pytest.raises(ConfigurationError, match="no blob under az://errors-src/fotos/"):
        AzureBlobStore(auth, SRC).preflight("fotos")


def test_missing_permissions_are_found_before_any_work(azurite, service):
    """A SAS that may list but not read fails the read check; one that may not write fails
    the probe write; with both, the preflight passes and leaves nothing behind."""
    list_only = AzureAuth(azurite.url, "sas", _sas(ContainerSasPermissions(list=True)))
    store = AzureBlobStore(list_only, SRC, output_prefix="out")
    _fails_fast(store, "cannot read az://errors-src/photos/a.jpg: the credential is not allowed")
    # and stage 1 stops at such an error instead of recording every image as unreadable
    with pytest.raises(ConfigurationError):
        analyse_path(store, COLLECTION, 256, 10**8, "a.jpg")
    read_only = AzureAuth(azurite.url, "sas", _sas(ContainerSasPermissions(read=True, list=True)))
    _fails_fast(
        AzureBlobStore(read_only, SRC, output_prefix="out"),
        "cannot write az://errors-src/out/photos_deduplicated/.dedup-probe-.*not allowed .*403",
    )
    full = ContainerSasPermissions(read=True, list=True, write=True, create=True, delete=True)
    AzureBlobStore(AzureAuth(azurite.url, "sas", _sas(full)), SRC, output_prefix="out").preflight(COLLECTION)
    assert [b.name for b in service.get_container_client(SRC).list_blobs()] == [
        f"{COLLECTION}/a.jpg", f"{COLLECTION}/b.jpg"
    ]


# --------------------------------------------------------------------------- transient


def test_transient_errors_are_retried_with_a_warning_each(azurite, service, caplog):
    with FaultProxy(azurite.port) as proxy:
        store = AzureBlobStore(azurite.auth(proxy.port), SRC, limits=AzureLimits(retry_backoff=0.05))
        proxy.script = ["500", "drop"]
        with caplog.at_level(logging.WARNING, logger="dedup_assets.azure"):
            assert store.read_bytes(COLLECTION, "a.jpg").startswith(b"\xff\xd8")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and proxy.injected == {"500": 1, "drop": 1}
    assert "GET http://127.0.0.1:" in warnings[0] and "/errors-src/photos/a.jpg: 500 InternalError" in warnings[0]
    assert "retry 1 of 10 in " in warnings[0] and "retry 2 of 10 in " in warnings[1]


def test_retries_stop_at_the_time_bound(azurite, service, caplog):
    """An outage: every answer a 500, or nothing listening. No retry starts past
    ``retry_total_timeout``, and the error is a StoreError (transient), not a configuration one."""
    limits = AzureLimits(retry_total=100, retry_backoff=0.2, retry_backoff_max=0.4, retry_total_timeout=2.0)
    with FaultProxy(azurite.port) as proxy:
        store = AzureBlobStore(azurite.auth(proxy.port), SRC, limits=limits)
        proxy.script = ["500"] * 100
        start = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="dedup_assets.azure"):
            with pytest.raises(StoreError, match="500") as err:
                store.read_bytes(COLLECTION, "a.jpg")
        elapsed = time.perf_counter() - start
    assert not isinstance(err.value, ConfigurationError)
    assert 1.4 < elapsed < 3.0 and 4 <= proxy.injected["500"] < 20
    assert "would pass the retry time bound (2 s" in caplog.records[-1].getMessage()
    closed = AzureBlobStore(azurite.auth(free_port()), SRC, limits=limits)
    start = time.perf_counter()
    with pytest.raises(StoreError, match="Connection refused") as err:
        closed.preflight(COLLECTION)
    assert not isinstance(err.value, ConfigurationError) and time.perf_counter() - start < 3.0


# --------------------------------------------------------------------------- Dagster, CLI


def test_an_asset_with_a_configuration_error_is_not_retried(tmp_path, capsys):
    """STORE_RETRY would retry the asset 3 times (5 s, 10 s, 20 s); a Failure with
    allow_retries=False fails it at the first attempt, and the CLI says it in one line."""
    (tmp_path / "src" / COLLECTION).mkdir(parents=True)
    (tmp_path / "a-file").write_text("a regular file where the output folder should be")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(collections_partitions.name, [COLLECTION])
    start = time.perf_counter()
    result = materialize(
        [blob_inventory],
        partition_key=COLLECTION,
        resources={
            "store": LocalFolderStoreResource(
                root=str(tmp_path / "src"), output_root=str(tmp_path / "a-file" / "out")
            ),
            "io_manager": DedupDuckDBIOManager(database=str(tmp_path / "db.duckdb"), schema="dedup"),
        },
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success and time.perf_counter() - start < 20
    types = [e.event_type for e in result.all_events]
    assert DagsterEventType.STEP_UP_FOR_RETRY not in types
    [failure] = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data.description.startswith("cannot write the output folder ")
    assert "a-file is a file" in data.description
    capsys.readouterr()
    assert report_failure(result) == 2
    assert capsys.readouterr().err == f"dedup-assets: {data.description}\n"


def test_cli_configuration_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    src = tmp_path / COLLECTION
    src.mkdir()
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["run", str(src), "--output", str(tmp_path / "a-file" / "out")], None,
         "cannot write the output folder"),
        (["run", str(src), "--output", str(tmp_path / "out"), "--state", str(tmp_path / "a-file")],
         None, "cannot write the state folder (--state)"),
        (["run", "az://photos/holiday"], "AccountName=acct;AccountKey", "is malformed"),
        (["run", "az://photos/holiday"],
         f"DefaultEndpointsProtocol=https;AccountName=nosuch;AccountKey={AZURITE_KEY};"
         "EndpointSuffix=invalid", "nosuch.blob.invalid does not exist"),
    ]
    for argv, conn, message in cases:
        if conn:
            monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
        start = time.perf_counter()
        assert main(argv + ["--workers", "1"]) == 2
        assert time.perf_counter() - start < FAST
        captured = capsys.readouterr()
        assert captured.out == ""
        [line] = captured.err.splitlines()
        assert line.startswith("dedup-assets: ") and message in line, line
        assert AZURITE_KEY not in line
