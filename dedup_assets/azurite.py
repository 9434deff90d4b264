"""Azurite, the Azure Storage emulator (npm package ``azurite``: the real Blob REST API on
loopback), started on a free port for the tests and the Azure benchmarks.

``scripts/bootstrap.sh`` installs it into ``node_modules/`` (``npm ci``, from the committed
``package-lock.json``); ``AZURITE_BLOB`` may name another ``azurite-blob`` executable.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .core.azure_store import AZURITE_ACCOUNT, AZURITE_KEY, AzureAuth

REPO_ROOT = Path(__file__).resolve().parents[1]


class AzuriteError(RuntimeError):
    """Azurite could not be found or started."""


def azurite_executable() -> str:
    """Path of ``azurite-blob``: $AZURITE_BLOB, the repository's node_modules, or $PATH."""
    candidates = [
        os.environ.get("AZURITE_BLOB"),
        str(REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"),
        shutil.which("azurite-blob"),
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise AzuriteError(
        "azurite-blob not found: run `bash scripts/bootstrap.sh` (it runs `npm ci`, which needs "
        "node >= 20 and npm) or set AZURITE_BLOB to an azurite-blob executable"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Azurite:
    """A running ``azurite-blob`` (in-memory) on a free loopback port; a context manager."""

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def url_on(self, port: int) -> str:
        """The account URL through another port (a proxy in front of Azurite)."""
        return f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"

    def connection_string(self, port: int | None = None) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.url_on(port or self.port)};"
        )

    def auth(self, port: int | None = None) -> AzureAuth:
        return AzureAuth(self.url_on(port or self.port), "key", AZURITE_KEY, AZURITE_ACCOUNT)

    def start(self) -> Azurite:
        exe = azurite_executable()
        self._dir = tempfile.TemporaryDirectory(prefix="azurite-")
        log = Path(self._dir.name) / "azurite.log"
        for _ in range(3):  # the free port may be taken between choosing and binding it
            self.port = free_port()
            with open(log, "wb") as out:
                self._proc = subprocess.Popen(
                    [
                        exe,
                        "--blobHost", "127.0.0.1",
                        "--blobPort", str(self.port),
                        "--inMemoryPersistence",
                        "--skipApiVersionCheck",
                        "--disableTelemetry",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self._dir.name,
                )
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _listening(self.port):
                    return self
                time.sleep(0.1)
            self.stop(keep_dir=True)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise AzuriteError(f"azurite-blob ({exe}) did not start listening; its output:\n{tail}")

    def stop(self, keep_dir: bool = False) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        if self._dir is not None and not keep_dir:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
