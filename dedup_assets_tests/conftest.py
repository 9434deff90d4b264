"""Test settings: 4 shards per collection keeps the many small Dagster runs few."""

import os

os.environ.setdefault("DEDUP_SHARDS", "4")
