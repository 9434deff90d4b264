"""Shared test settings and fixtures.

- 4 shards per collection (``DEDUP_SHARDS``, read when the partitions load) keeps the many
  small Dagster runs of a collection few.
- Azurite (the Azure Storage emulator) for the Azure tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("DEDUP_SHARDS", "4")

import pytest  # noqa: E402

from dedup_assets.azurite import Azurite, AzuriteError  # noqa: E402

#: Set to 1 to skip the Azure tests when Azurite cannot run here (never honoured under CI).
OPT_OUT = "DEDUP_SKIP_AZURITE"


@pytest.fixture(scope="session")
def azurite():
    """A running Azurite on a free loopback port, stopped at the end of the session.

    If it cannot start, the Azure tests fail (they are part of the suite), unless
    DEDUP_SKIP_AZURITE=1 is set outside CI.
    """
    try:
        server = Azurite().start()
    except AzuriteError as exc:
        if os.environ.get(OPT_OUT) == "1" and os.environ.get("CI", "").lower() not in ("1", "true"):
            pytest.skip(f"{OPT_OUT}=1 and Azurite is unavailable: {exc}")
        pytest.fail(
            f"Azurite is required by the Azure tests and could not start: {exc}\n"
            f"(set {OPT_OUT}=1 to skip them on a machine without node)",
            pytrace=False,
        )
    yield server
    server.stop()
