"""Backfills through a running Dagster webserver's GraphQL API (what the UI does).

``dedup-assets backfill COLLECTION… --url http://127.0.0.1:3000`` adds the collections as
partitions if needed and launches one asset backfill of the whole graph for them: the
inventory, every shard of stage 1, then the collection-level stages, run by the daemon
through the run queue. With ``--wait`` it prints the backfill's progress every ~10 s
(:func:`wait_for_backfill`).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable


def _asset_names() -> list[str]:
    from .assets import ALL_ASSETS

    return [a.key.path[-1] for a in ALL_ASSETS]


class GraphQLError(RuntimeError):
    pass


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.load(response)
    if payload.get("errors"):
        raise GraphQLError(json.dumps(payload["errors"])[:2000])
    return payload["data"]


def repositories(url: str) -> list[dict]:
    """Code locations with their sensors and schedules."""
    data = graphql(
        url,
        """{ repositoriesOrError { __typename ... on RepositoryConnection { nodes {
              name location { name } sensors { name } schedules { name } } } } }""",
    )
    return data["repositoriesOrError"]["nodes"]


def add_collections(url: str, collections: list[str]) -> None:
    repo = next(r for r in repositories(url) if r["sensors"] or r["schedules"])
    selector = {"repositoryName": repo["name"], "repositoryLocationName": repo["location"]["name"]}
    for key in collections:
        data = graphql(
            url,
            """mutation($sel: RepositorySelector!, $key: String!) {
                 addDynamicPartition(repositorySelector: $sel, partitionsDefName: "collections",
                                     partitionKey: $key) {
                   __typename ... on PythonError { message }
                   ... on UnauthorizedError { message } } }""",
            {"sel": selector, "key": key},
        )["addDynamicPartition"]
        if data["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise GraphQLError(f"could not add collection {key!r}: {data}")


def launch_backfill(url: str, collections: list[str]) -> str:
    """Launch a backfill of every asset for ``collections``; returns the backfill id."""
    data = graphql(
        url,
        """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
             __typename ... on LaunchBackfillSuccess { backfillId }
             ... on PythonError { message } ... on PartitionSetNotFoundError { message }
             ... on InvalidStepError { invalidStepKey } ... on InvalidOutputError { invalidOutputName }
             ... on UnauthorizedError { message } } }""",
        {
            "params": {
                "partitionNames": collections,
                "assetSelection": [{"path": [a]} for a in _asset_names()],
                "title": "dedup-assets backfill",
            }
        },
    )["launchPartitionBackfill"]
    if data["__typename"] != "LaunchBackfillSuccess":
        raise GraphQLError(f"backfill not launched: {data}")
    return data["backfillId"]


def backfill_status(url: str, backfill_id: str) -> str:
    data = graphql(
        url,
        """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
             __typename ... on PartitionBackfill { status } ... on PythonError { message } } }""",
        {"id": backfill_id},
    )["partitionBackfillOrError"]
    if data["__typename"] != "PartitionBackfill":
        raise GraphQLError(str(data))
    return data["status"]


#: Backfill statuses that are not final.
RUNNING_STATUSES = ("REQUESTED", "CANCELING", "FAILING")
_RUN_WORDS = {
    "SUCCESS": "succeeded",
    "STARTED": "running",
    "STARTING": "starting",
    "QUEUED": "queued",
    "NOT_STARTED": "not started",
    "FAILURE": "failed",
    "CANCELING": "canceling",
    "CANCELED": "canceled",
}
#: How the assets' partitions are counted in a progress line, in the jobs' order.
_STAGES = {"blob_inventory": "inventory", "wavelet_hashes": "stage 1"}


def backfill_progress(url: str, backfill_id: str) -> tuple[str, str]:
    """The backfill's status and one line of progress: its runs by status, and how many
    partitions of the inventory, of stage 1 and of the later stages are materialised."""
    data = graphql(
        url,
        """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
             __typename ... on PythonError { message }
             ... on PartitionBackfill { status runs { status }
               assetBackfillData { assetBackfillStatuses {
                 ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted
                       numPartitionsMaterialized numPartitionsFailed } } } } } }""",
        {"id": backfill_id},
    )["partitionBackfillOrError"]
    if data["__typename"] != "PartitionBackfill":
        raise GraphQLError(str(data))
    runs = Counter(r["status"] for r in data["runs"])
    runs_text = ", ".join(f"{n} {_RUN_WORDS.get(s, s.lower())}" for s, n in sorted(runs.items()))
    done: dict[str, list[int]] = {}
    failed = 0
    for asset in (data.get("assetBackfillData") or {}).get("assetBackfillStatuses", []):
        if "assetKey" not in asset:
            continue
        stage = _STAGES.get(asset["assetKey"]["path"][-1], "later stages")
        counts = done.setdefault(stage, [0, 0])
        counts[0] += asset["numPartitionsMaterialized"]
        counts[1] += asset["numPartitionsTargeted"]
        failed += asset["numPartitionsFailed"]
    order = [*_STAGES.values(), "later stages"]
    parts_text = ", ".join(
        f"{stage} {done[stage][0]}/{done[stage][1]}" for stage in order if stage in done
    )
    line = f"runs: {runs_text or 'none yet'}; partitions done: {parts_text or '?'}"
    if failed:
        line += f", {failed} failed"
    return data["status"], line


def wait_for_backfill(
    url: str,
    backfill_id: str,
    *,
    say: Callable[[str], None] = print,
    every_s: float = 10.0,
    poll_s: float = 2.0,
) -> str:
    """Wait until the backfill ends, saying its progress every ``every_s`` seconds (and once
    at the end); returns its final status."""
    start = last = time.monotonic()
    while True:
        status, line = backfill_progress(url, backfill_id)
        now = time.monotonic()
        if status not in RUNNING_STATUSES or now - last >= every_s:
            say(f"backfill {backfill_id} {status} at {now - start:.0f} s: {line}")
            last = now
        if status not in RUNNING_STATUSES:
            return status
        time.sleep(poll_s)
