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
  out the pause, so a throttled run slows down as a whole instead of hammering the account;
- only transient failures retried: answers above, connection errors and timeouts. A host
  name that does not exist (:func:`unresolved_host`: a wrong account or endpoint), a failed
  authentication, a request that cannot be signed, 401/403/404 are raised at once;
- a total time bound per request (``total_timeout``): no retry starts once the time spent on
  the request plus the next wait would pass it;
- a warning per retry on the ``dedup_assets.azure`` logger: the request, what failed, which
  retry, how long it waits and how much of the time bound is spent.
"""

from __future__ import annotations

import logging
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline.policies._utils import parse_retry_after
from azure.storage.blob import ExponentialRetry
from azure.storage.blob._shared.policies import is_retry

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
THROTTLE_STATUS = frozenset({429, 503})
#: Longest pause taken from a server's Retry-After (seconds); longer values are clamped.
MAX_RETRY_AFTER = 300.0
#: Default bound on the time one request may spend in retries (seconds).
DEFAULT_TOTAL_TIMEOUT = 300.0
#: getaddrinfo's "no such name" answers (NXDOMAIN): a wrong account or endpoint, not an outage.
#: A DNS server that does not answer (EAI_AGAIN) is an outage: retried.
_NO_SUCH_NAME = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)

log = logging.getLogger("dedup_assets.azure")
_QUERY = re.compile(r"[?][^\s'\"]*")  # a URL's query, where a SAS token would be


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: ``__cause__``, ``__context__``, azure-core's
    ``inner_exception``, urllib3's ``reason``, exceptions among ``args`` (as requests keeps them)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "inner_exception", None)]
        todo += [getattr(e, "reason", None), *getattr(e, "args", ())]


def unresolved_host(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a host name that does not exist (DNS answered "no such name")."""
    return any(isinstance(e, socket.gaierror) and e.errno in _NO_SUCH_NAME for e in causes(exc))


def transient(err: AzureError) -> bool:
    """Whether a request that raised ``err`` may succeed when sent again: a connection error or
    a timeout, but not a host that does not exist. Anything else (authentication, signing, a
    credential that cannot get a token) is raised at once."""
    return isinstance(err, (ServiceRequestError, ServiceResponseError)) and not unresolved_host(err)


def _what(request) -> str:
    """``GET https://host/container/blob`` without the query (a SAS token would be there)."""
    parts = urlsplit(request.url)
    return f"{request.method} {urlunsplit((parts.scheme, parts.netloc, parts.path, '', ''))}"


def describe_failure(err: BaseException) -> str:
    """``ServiceRequestError: Connection refused``: the error's type and its root cause (the
    operating system's words where there are some), one line, without URL queries."""
    for e in causes(err):
        if isinstance(e, socket.gaierror):
            return f"{type(err).__name__}: cannot resolve the host ({e.strerror or e})"
        if isinstance(e, OSError) and e.strerror:
            return f"{type(err).__name__}: {e.strerror}"
        if isinstance(e, TimeoutError):
            return f"{type(err).__name__}: timed out"
    first = (str(getattr(err, "message", None) or err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {_QUERY.sub('', first)[:200]}"


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
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
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
        self.total_timeout = total_timeout
        self.gate = gate or THROTTLE

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        base = min(self.backoff_max, self.initial_backoff * (2 ** settings["count"]))
        return random.uniform(base * (1 - self.jitter), base * (1 + self.jitter))

    def _retryable(self, response, settings) -> bool:
        status = response.http_response.status_code
        return status in RETRY_STATUS or is_retry(response, settings["mode"])

    def _may_wait(self, request, settings, start: float, failure: str, delay: float) -> bool:
        """Log the retry about to happen, or that there is none within the time bound."""
        spent = time.monotonic() - start
        what = _what(request.http_request)
        if spent + delay > self.total_timeout:
            log.warning(
                "Azure %s: %s; no retry: %.0f s spent, and the next wait (%.1f s) would pass "
                "the retry time bound (%.0f s, retry_total_timeout_s)",
                what, failure, spent, delay, self.total_timeout,
            )
            return False
        log.warning(
            "Azure %s: %s; retry %d of %d in %.1f s (%.0f s of %.0f s spent)",
            what, failure, settings["count"], self.total_retries, delay, spent, self.total_timeout,
        )
        return True

    def send(self, request):
        settings = self.configure_retries(request)
        start = time.monotonic()
        while True:
            self.gate.wait()
            try:
                response = self.next.send(request)
            except AzureError as err:
                if not transient(err) or not self.increment(
                    settings, request=request.http_request, error=err
                ):
                    raise
                delay = self.get_backoff_time(settings)
                if not self._may_wait(request, settings, start, describe_failure(err), delay):
                    raise
                time.sleep(delay)
                continue
            if not self._retryable(response, settings):
                break
            if not self.increment(
                settings, request=request.http_request, response=response.http_response
            ):
                break
            status = response.http_response.status_code
            delay = self.get_backoff_time(settings)
            asked = retry_after_seconds(response.http_response.headers)
            if asked is not None:
                delay = max(delay, asked)
            code = response.http_response.headers.get("x-ms-error-code") or ""
            if not self._may_wait(request, settings, start, f"{status} {code}".strip(), delay):
                break
            if status in THROTTLE_STATUS:
                self.gate.pause(delay)
            else:
                time.sleep(delay)
        if settings["history"]:
            response.context["history"] = settings["history"]
        response.http_response.location_mode = settings["mode"]
        return response
