"""The allowlist of :class:`bridge.jobs.BridgeJob` also covers what rq runs around a job: callbacks and
webhooks named in a job hash are never imported, called or sent, and such a job is refused."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import redis
import rq

from bridge.jobs import SERIALIZER, UnknownJobFunction, job_class_with
from bridge.protocol import LAUNCH_POD, Keys, TryState, job_id_for
from bridge.sim.cluster import Simulator
from tests.test_dispatcher import ConfigFactory, enqueue, key, pods, record, run_burst

GADGET = "kbridge_test_gadget"


@pytest.fixture
def gadget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable module that leaves a marker when imported and another when its function is called."""
    (tmp_path / f"{GADGET}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(tmp_path / 'imported')!r}).write_text('imported')\n"
        "def called(*args, **kwargs):\n"
        f"    Path({str(tmp_path / 'called')!r}).write_text('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(GADGET, None)


class _Recorder(BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def _record(self) -> None:
        self.requests.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP endpoint recording every request it gets (rq sends webhooks synchronously)."""
    requests: list[str] = []
    handler = type("Recorder", (_Recorder,), {"requests": requests})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_job_naming_callbacks_has_none_and_is_refused(redis_client: redis.Redis, gadget: Path) -> None:
    job_id = enqueue(redis_client, key(1))
    redis_client.hset(Keys.rq_job(job_id), "stopped_callback_name", f"{GADGET}.called")
    job = job_class_with({LAUNCH_POD: lambda *_: None}).fetch(
        job_id, connection=redis_client, serializer=SERIALIZER
    )
    assert (job.success_callback, job.failure_callback, job.stopped_callback) == (None, None, None)
    with pytest.raises(UnknownJobFunction, match=f"stopped_callback_name '{GADGET}.called'"):
        _ = job.func
    assert not (gadget / "imported").exists()


def test_the_dispatcher_never_imports_calls_or_sends_what_a_job_hash_names(
    bridge_config: ConfigFactory,
    redis_client: redis.Redis,
    simulator: Simulator,
    gadget: Path,
    webhook_server: tuple[str, list[str]],
) -> None:
    url, requests = webhook_server
    on_success = enqueue(redis_client, key(1))
    redis_client.hset(Keys.rq_job(on_success), "success_callback_name", f"{GADGET}.called")
    on_failure = enqueue(redis_client, key(2), func="os.system", args=["true"])
    redis_client.hset(Keys.rq_job(on_failure), "failure_callback_name", f"{GADGET}.called")
    hooked = enqueue(redis_client, key(3))
    hooks = [{"url": url, "job_status": status, "method": "POST"} for status in ("finished", "failed")]
    redis_client.hset(Keys.rq_job(hooked), "webhooks", json.dumps(hooks))
    clean = enqueue(redis_client, key(4))
    run_burst(bridge_config())

    assert not (gadget / "imported").exists()
    assert not (gadget / "called").exists()
    assert GADGET not in sys.modules
    assert requests == []
    for n in (1, 2, 3):
        refused = record(redis_client, key(n))
        assert (refused.state, refused.reason) == (TryState.FAILED, "InvalidMessage")
        job = rq.job.Job.fetch(job_id_for(key(n)), connection=redis_client, serializer=SERIALIZER)
        assert job.get_status() == "failed"
    assert "which the bridge never runs" in record(redis_client, key(1)).message
    assert "webhook" in record(redis_client, key(3)).message
    assert list(pods(simulator)) == [clean]
