"""Retries for Azure Blob Storage: azure-storage-blob's exponential retry policy, made to
treat throttling as a reason to slow down rather than to fail.

:class:`ThrottleAwareRetry` is the storage SDK's :class:`~azure.storage.blob.ExponentialRetry`
(same counters, body rewinding and secondary-host handling) with:

- retries on 408, 429, 500, 502, 503 and 504 answers and on connection errors (the storage
  policy alone does not retry 429);
- capped exponential backoff with jitter (``backoff * 2**n``, +/- ``jitter``, at most
  ``backoff_max``);
- the server's ``retry-after-ms`` / ``x-ms-retry-after-ms`` / ``Retry-After`` honoured as the
  least wait;
- a process-wide :class:`ThrottleGate`: after a 429 or 503 every request of the process waits
  out the pause, so a throttled run slows down as a whole instead of hammering the account.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from azure.core.exceptions import AzureError
from azure.core.pipeline.policies._utils import parse_retry_after
from azure.storage.blob import ExponentialRetry
from azure.storage.blob._shared.policies import is_retry

try:  # present in current azure-storage-blob releases
    from azure.storage.blob._shared.authentication import AzureSigningError
except ImportError:  # pragma: no cover - older SDKs
    AzureSigningError = ()  # type: ignore[assignment]

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
THROTTLE_STATUS = frozenset({429, 503})
#: Longest pause taken from a server's Retry-After (seconds); longer values are clamped.
MAX_RETRY_AFTER = 300.0


class ThrottleGate:
    """A pause shared by every request of this process."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)
            self.pauses += 1

    def wait(self) -> None:
        while True:
            delay = self._until - time.monotonic()
            if delay <= 0:
                return
            time.sleep(min(delay, 1.0))


#: The gate of this process (one per process: worker processes get their own).
THROTTLE = ThrottleGate()


def retry_after_seconds(headers: Any) -> float | None:
    """The server's requested wait: ``retry-after-ms`` headers first, then ``Retry-After``."""
    lower = {k.lower(): v for k, v in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if lower.get(name):
            try:
                return min(MAX_RETRY_AFTER, parse_retry_after(lower[name]) / 1000.0)
            except (ValueError, TypeError):
                pass
    if lower.get("retry-after"):
        try:
            return min(MAX_RETRY_AFTER, parse_retry_after(lower["retry-after"]))
        except (ValueError, TypeError):
            return None
    return None


class ThrottleAwareRetry(ExponentialRetry):
    """Storage exponential retry that also retries 429, honours Retry-After and shares pauses."""

    def __init__(
        self,
        *,
        retry_total: int = 10,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        jitter: float = 0.5,
        gate: ThrottleGate | None = None,
    ) -> None:
        super().__init__(
            initial_backoff=backoff,
            increment_base=2,
            retry_total=retry_total,
            random_jitter_range=0,
            retry_connect=retry_total,
            retry_read=retry_total,
            retry_status=retry_total,
        )
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.gate = gate or THROTTLE

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        base = min(self.backoff_max, self.initial_backoff * (2 ** settings["count"]))
        return random.uniform(base * (1 - self.jitter), base * (1 + self.jitter))

    def _retryable(self, response, settings) -> bool:
        status = response.http_response.status_code
        return status in RETRY_STATUS or is_retry(response, settings["mode"])

    def send(self, request):
        settings = self.configure_retries(request)
        while True:
            self.gate.wait()
            try:
                response = self.next.send(request)
            except AzureError as err:
                if isinstance(err, AzureSigningError) or not self.increment(
                    settings, request=request.http_request, error=err
                ):
                    raise
                time.sleep(self.get_backoff_time(settings))
                continue
            if not self._retryable(response, settings):
                break
            if not self.increment(
                settings, request=request.http_request, response=response.http_response
            ):
                break
            delay = self.get_backoff_time(settings)
            asked = retry_after_seconds(response.http_response.headers)
            if asked is not None:
                delay = max(delay, asked)
            if response.http_response.status_code in THROTTLE_STATUS:
                self.gate.pause(delay)
            else:
                time.sleep(delay)
        if settings["history"]:
            response.context["history"] = settings["history"]
        response.http_response.location_mode = settings["mode"]
        return response
