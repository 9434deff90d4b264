"""Backfills through a running Dagster webserver's GraphQL API (what the UI does).

``dedup-assets backfill COLLECTION… --url http://127.0.0.1:3000`` adds the collections as
partitions if needed and launches one asset backfill of the whole graph for them: the
inventory, every shard of stage 1, then the collection-level stages, run by the daemon
through the run queue.
"""

from __future__ import annotations

import json
import urllib.request



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
