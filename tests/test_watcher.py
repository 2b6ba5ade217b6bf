"""The watcher end to end: real Redis, the real kubernetes client, the simulator's scripted kubelet.

Pods are created the way a dispatcher creates them (``build_worker_pod`` + ``create_namespaced_pod``, then
the try record moved to ``launched``); the watcher runs in a thread (or as ``kbridge watcher`` processes)
and the tests read what it wrote: the result stream, the try records, the checkpoint, the pods left.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.config import KubeConfig
from bridge.executor_config import parse_executor_config
from bridge.kube_client import core_v1
from bridge.protocol import TERMINAL_STATES, Keys, Outcome, TryRecord, TryState, job_id_for
from bridge.records import TryRecords
from bridge.redis_server import RedisServer
from bridge.sim.cluster import Simulator
from bridge.sim.kubeconfig import write_kubeconfig
from bridge.task_key import TaskKey
from bridge.worker_pod import LAUNCH_SECRET_ANNOTATION, build_launch_secret, build_worker_pod
from tests.waiting import wait_until
from workers.watcher import DONE_LABEL, Watcher

pytestmark = pytest.mark.timeout(60)

NAMESPACE = "default"
MakeConfig = Callable[..., KubeConfig]
# (state, reason, exit code) of one outcome
Seen = tuple[str, str, int | None]
RUNNING: Seen = ("running", "", None)


def fast_config(make: MakeConfig, **kubernetes: str) -> KubeConfig:
    """Settings with a 2 s lease (so watches end every 2 s and takeovers are quick)."""
    options = {"worker_pods_pending_timeout": "0", **kubernetes}
    return make(kubernetes=options, bridge={"watcher_lease_seconds": "2"})


def text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Cluster:
    """Launches pods as a dispatcher would and reads back what the watcher reported."""

    def __init__(self, config: KubeConfig, client: redis.Redis) -> None:
        self.config = config
        self.redis = client
        self.keys = Keys(config.key_prefix, config.result_stream)
        self.records = TryRecords(client, self.keys, config.record_ttl_seconds)
        self.api = core_v1(config)

    def launch(
        self,
        task: str,
        outcome: str = "succeed",
        *,
        exit_code: int = 1,
        run_seconds: int = 0,
        record: bool = True,
    ) -> str:
        """Create the pod of a new try; ``record``: write its try record as the executor and dispatcher do."""
        key = TaskKey("dag", task, "run")
        annotations = {
            "sim.kbridge.io/outcome": outcome,
            "sim.kbridge.io/exit-code": str(exit_code),
            "sim.kbridge.io/run-seconds": str(run_seconds),
        }
        return self.launch_pod(key, {"metadata": {"annotations": annotations}}, record=record)

    def launch_pod(self, key: TaskKey, pod_override: dict[str, Any], *, record: bool = True) -> str:
        pod = build_worker_pod(
            key, ["true"], parse_executor_config({"pod_override": pod_override}), self.config
        )
        if record:
            self.records.advance(TryRecord(key, TryState.QUEUED, queue="default"))
        self.api.create_namespaced_pod(NAMESPACE, pod)
        if record:
            launched = TryRecord(key, TryState.LAUNCHED, pod=pod["metadata"]["name"], namespace=NAMESPACE)
            self.records.advance(launched)
        return job_id_for(key)

    def outcomes(self) -> dict[str, list[Seen]]:
        """Every result stream entry, by job id, in stream order."""
        found: dict[str, list[Seen]] = {}
        entries: Any = self.redis.xrange(self.keys.results)
        for _, fields in entries:
            outcome = Outcome.from_fields(fields)
            found.setdefault(outcome.job_id, []).append(
                (outcome.state.value, outcome.reason, outcome.exit_code)
            )
        return found

    def message(self, job_id: str) -> str:
        entries: Any = self.redis.xrange(self.keys.results)
        messages = [
            Outcome.from_fields(f).message for _, f in entries if Outcome.from_fields(f).job_id == job_id
        ]
        return messages[-1]

    def finished(self, *job_ids: str) -> bool:
        outcomes = self.outcomes()
        terminal = {state.value for state in TERMINAL_STATES}
        return all(any(seen[0] in terminal for seen in outcomes.get(job_id, [])) for job_id in job_ids)

    def wait_finished(self, *job_ids: str, timeout: float = 10) -> float:
        return wait_until(lambda: self.finished(*job_ids), f"outcomes of {job_ids}", timeout)

    def pods(self) -> dict[str, dict[str, str]]:
        """Pods left in the namespace: name -> labels."""
        return {
            pod.metadata.name: pod.metadata.labels for pod in self.api.list_namespaced_pod(NAMESPACE).items
        }

    def phases(self, *job_ids: str) -> list[str]:
        return [self.api.read_namespaced_pod(job_id, NAMESPACE).status.phase for job_id in job_ids]

    def wait_pods_ended(self, *job_ids: str) -> None:
        wait_until(lambda: set(self.phases(*job_ids)) <= {"Succeeded", "Failed"}, f"pods {job_ids} to end")

    def leader(self) -> str | None:
        return text(self.redis.get(self.keys.watcher_leader(NAMESPACE)))

    def checkpoint(self) -> str | None:
        return text(self.redis.get(self.keys.watcher_checkpoint(NAMESPACE)))


@pytest.fixture
def cluster(bridge_config: MakeConfig, redis_client: redis.Redis) -> Cluster:
    return Cluster(fast_config(bridge_config), redis_client)


def watching_from_checkpoint(config: KubeConfig) -> bool:
    """True once a leader has a checkpoint (its first list is applied): pods created from now on are
    reported from their first event, running included."""
    with redis.Redis.from_url(config.redis_url) as client:
        return bool(client.exists(Keys(config.key_prefix).watcher_checkpoint(NAMESPACE)))


@contextmanager
def watching(
    config: KubeConfig, name: str = "w1", *, wait_leading: bool = True, api: Any = None
) -> Iterator[Watcher]:
    """A watcher running in a thread; stopped (and proven to have stopped cleanly) on exit."""
    watcher = Watcher(config, name=name, api=api)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            watcher.run()
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        if wait_leading:
            wait_until(lambda: watching_from_checkpoint(config), f"{name} to start watching")
        yield watcher
    finally:
        watcher.stop()
        thread.join(10)
        assert not thread.is_alive(), f"{name} did not stop"
        assert not errors, errors


# --- outcomes ------------------------------------------------------------------------------------------


def test_every_kind_of_outcome_is_reported_once_with_its_reason(
    bridge_config: MakeConfig, redis_client: redis.Redis
) -> None:
    config = fast_config(bridge_config, worker_pods_pending_timeout="1")
    cluster = Cluster(config, redis_client)
    missing_secret = {
        "name": "DB_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "absent", "key": "password"}},
    }
    with watching(config):
        jobs = {
            "success": cluster.launch("ok"),
            "exit 3": cluster.launch("bad", "fail", exit_code=3),
            "oom": cluster.launch("oom", "oom"),
            "evicted": cluster.launch("evicted", "evict"),
            "image": cluster.launch("image", "err-image-pull"),
            "secret": cluster.launch_pod(
                TaskKey("dag", "secret", "run"),
                {"spec": {"containers": [{"name": "base", "env": [missing_secret]}]}},
            ),
            "pending": cluster.launch("stuck", "pending"),
        }
        cluster.wait_finished(*jobs.values())
        # Pods failed while Pending are deleted, failed ones kept and labelled, successes deleted (defaults).
        wait_until(lambda: set(cluster.pods()) == {jobs["exit 3"], jobs["oom"], jobs["evicted"]}, "clean-up")
    outcomes = cluster.outcomes()
    assert outcomes == {
        jobs["success"]: [RUNNING, ("success", "Completed", 0)],
        jobs["exit 3"]: [RUNNING, ("failed", "Error", 3)],
        jobs["oom"]: [RUNNING, ("failed", "OOMKilled", 137)],
        jobs["evicted"]: [RUNNING, ("failed", "Evicted", 137)],
        jobs["image"]: [("failed", "ErrImagePull", None)],
        jobs["secret"]: [("failed", "CreateContainerConfigError", None)],
        jobs["pending"]: [("failed", "PendingTimeout", None)],
    }
    assert 'secret "absent" not found' in cluster.message(jobs["secret"])
    assert "worker_pods_pending_timeout = 1 s" in cluster.message(jobs["pending"])
    assert all(labels.get(DONE_LABEL) == "true" for labels in cluster.pods().values())
    record = cluster.records.get(jobs["oom"])
    assert record is not None
    assert (record.state, record.phase, record.reason, record.exit_code) == (
        TryState.FAILED,
        "Failed",
        "OOMKilled",
        137,
    )
    assert (record.queue, record.pod, record.namespace) == ("default", jobs["oom"], NAMESPACE)
    assert cluster.records.in_flight() == []
    assert cluster.checkpoint() is not None


@pytest.mark.parametrize(("delete", "on_failure"), [(True, True), (False, False)])
def test_deletion_policy(
    bridge_config: MakeConfig, redis_client: redis.Redis, delete: bool, on_failure: bool
) -> None:
    config = fast_config(
        bridge_config, delete_worker_pods=str(delete), delete_worker_pods_on_failure=str(on_failure)
    )
    cluster = Cluster(config, redis_client)
    with watching(config):
        ok, bad = cluster.launch("ok"), cluster.launch("bad", "fail")
        cluster.wait_finished(ok, bad)
        expected = set() if delete else {ok, bad}
        wait_until(
            lambda: (
                {name for name, labels in cluster.pods().items() if labels.get(DONE_LABEL) == "true"}
                == expected
                and set(cluster.pods()) == expected
            ),
            "the pods to be deleted or labelled done",
        )


# --- checkpoint, resume, 410 --------------------------------------------------------------------------


def test_a_restarted_watcher_resumes_from_the_checkpoint_and_reports_missed_pods_once(
    cluster: Cluster,
) -> None:
    with watching(cluster.config, "first"):
        before = cluster.launch("before")
        cluster.wait_finished(before)
    checkpoint = cluster.checkpoint()
    assert checkpoint is not None
    missed = [cluster.launch("missed-ok"), cluster.launch("missed-bad", "fail", exit_code=7)]
    cluster.wait_pods_ended(*missed)
    with watching(cluster.config, "second") as second:
        cluster.wait_finished(*missed)
    assert second.stats.relists == 0, "it must resume from the checkpoint, not re-list"
    assert int(cluster.checkpoint() or 0) > int(checkpoint)
    assert cluster.outcomes() == {
        before: [RUNNING, ("success", "Completed", 0)],
        # Resuming replays the history, so even the missed running outcome is there, once.
        missed[0]: [RUNNING, ("success", "Completed", 0)],
        missed[1]: [RUNNING, ("failed", "Error", 7)],
    }


@pytest.mark.parametrize("expiry", ["error-event", "http-410", "compaction"])
def test_an_expired_checkpoint_relists_and_reports_each_changed_pod_once(
    cluster: Cluster, simulator: Simulator, expiry: str
) -> None:
    with watching(cluster.config, "first"):
        before = [cluster.launch("before-ok"), cluster.launch("before-bad", "fail")]
        cluster.wait_finished(*before)
    missed = [cluster.launch("missed-ok"), cluster.launch("missed-bad", "oom")]
    cluster.wait_pods_ended(*missed)
    fault = None
    if expiry == "compaction":
        simulator.store.compact()
    else:
        fault = simulator.faults.inject(
            verb="watch", action="expire", form="event" if expiry == "error-event" else "http"
        )
    with watching(cluster.config, "second") as second:
        cluster.wait_finished(*missed)
        kept = {before[1], missed[1]}  # failures are kept (labelled done), successes deleted
        wait_until(lambda: set(cluster.pods()) == kept, "clean-up of the re-listed pods")
    assert fault is None or fault.hits == 1
    assert second.stats.relists == 1
    outcomes = cluster.outcomes()
    assert outcomes[before[0]] == [RUNNING, ("success", "Completed", 0)]
    assert outcomes[before[1]] == [RUNNING, ("failed", "Error", 1)]
    # The re-list sees only the final state: one terminal outcome each, nothing twice.
    assert outcomes[missed[0]] == [("success", "Completed", 0)]
    assert outcomes[missed[1]] == [("failed", "OOMKilled", 137)]


def test_pods_deleted_while_no_watcher_ran_are_reported_vanished(
    cluster: Cluster, simulator: Simulator
) -> None:
    with watching(cluster.config, "first"):
        lost, revoked = cluster.launch("lost", "pending"), cluster.launch("revoked", "pending")
        wait_until(
            lambda: all(
                (r is not None and r.state == TryState.PENDING)
                for r in cluster.records.get_many([lost, revoked]).values()
            ),
            "both pods to be seen pending",
        )
    cluster.records.mark_revoked(revoked)
    for job_id in (lost, revoked):
        cluster.api.delete_namespaced_pod(job_id, NAMESPACE, grace_period_seconds=0)
    simulator.store.compact()  # the DELETED events are gone from the history: only a re-list can tell
    with watching(cluster.config, "second"):
        cluster.wait_finished(lost, revoked)
    assert cluster.outcomes() == {
        lost: [("failed", "PodVanished", None)],
        revoked: [("revoked", "Revoked", None)],
    }
    assert cluster.records.in_flight() == []


def test_pods_deleted_under_a_running_watcher_fail_or_count_as_revoked(cluster: Cluster) -> None:
    with watching(cluster.config):
        running = cluster.launch("deleted", run_seconds=60)
        revoked = cluster.launch("revoked", "pending")
        wait_until(lambda: cluster.outcomes().get(running) == [RUNNING], "the pod to run")
        cluster.records.mark_revoked(revoked)
        for job_id in (running, revoked):
            cluster.api.delete_namespaced_pod(job_id, NAMESPACE, grace_period_seconds=0)
        cluster.wait_finished(running, revoked)
    outcomes = cluster.outcomes()
    assert outcomes[running] == [RUNNING, ("failed", "PodDeleted", None)]
    assert outcomes[revoked] == [("revoked", "Revoked", None)]


def test_a_pod_without_a_task_key_is_skipped_with_one_warning(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = build_worker_pod(TaskKey("dag", "stranger", "run"), ["true"], None, cluster.config)
    del stranger["metadata"]["annotations"]["dag_id"]  # e.g. edited by hand: no way back to its task
    name = stranger["metadata"]["name"]
    with watching(cluster.config):
        cluster.api.create_namespaced_pod(NAMESPACE, stranger)
        cluster.wait_pods_ended(name)
        good = cluster.launch("good")
        cluster.wait_finished(good)
    assert caplog.text.count(f"skipping pod {name}: pod annotation 'dag_id'") == 1
    assert cluster.outcomes() == {good: [RUNNING, ("success", "Completed", 0)]}
    assert name in cluster.pods(), "a pod the watcher cannot attribute is left alone"


# --- failures around it -------------------------------------------------------------------------------


class FreezingProxy:
    """A TCP forwarder to the simulator whose open connections can be frozen: sockets stay open, no byte
    passes any more, as with a peer behind a dead load balancer. New connections still work."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._frozen: list[threading.Event] = []
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> int:
        """Freeze every open connection; how many there were."""
        with self._lock:
            for frozen in self._frozen:
                frozen.set()
            return len(self._frozen)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            frozen = threading.Event()
            with self._lock:
                self._frozen.append(frozen)
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, frozen), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket, frozen: threading.Event) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if not frozen.is_set():
                        peers[sock].sendall(data)
        except OSError:
            return


@pytest.mark.timeout(40)
def test_a_silent_connection_is_abandoned_after_the_read_timeout(
    bridge_config: MakeConfig, redis_client: redis.Redis, simulator: Simulator, tmp_path: Path
) -> None:
    proxy = FreezingProxy(("127.0.0.1", int(simulator.url.rsplit(":", 1)[1])))
    kubeconfig = tmp_path / "via-proxy.yaml"
    write_kubeconfig(kubeconfig, f"http://127.0.0.1:{proxy.port}")
    # The server ends each watch within 5 s (the sweep interval), but a frozen connection never delivers
    # that end: only the 1 s read timeout can free the watcher.
    config = bridge_config(kubernetes={"config_file": str(kubeconfig), "request_timeout_seconds": "1"})
    cluster = Cluster(bridge_config(), redis_client)  # the test itself talks to the simulator directly
    try:
        with watching(config):
            first = cluster.launch("first")
            cluster.wait_finished(first)
            assert proxy.freeze() >= 1
            second = cluster.launch("second")  # its events are stuck behind the frozen watch
            took = cluster.wait_finished(second, timeout=12)
    finally:
        proxy.close()
    assert took < 5, "the watch must be re-opened after the 1 s read timeout"
    assert cluster.outcomes()[second] == [RUNNING, ("success", "Completed", 0)]


def test_api_errors_and_broken_watches_are_survived_without_loss_or_duplicates(
    cluster: Cluster, simulator: Simulator
) -> None:
    with watching(cluster.config) as watcher:
        # Taken by the next watches in this order; the expiry forces a re-list, which meets the list 500.
        faults = [
            simulator.faults.inject(verb="watch", status=500, count=2),
            simulator.faults.inject(verb="watch", action="drop", after_events=1),
            simulator.faults.inject(verb="watch", action="cut", after_events=3),
            simulator.faults.inject(verb="watch", action="expire"),
            simulator.faults.inject(verb="list", status=500),
        ]
        jobs: list[str] = []

        def launch_until_every_fault_was_hit() -> bool:
            # Each pod brings events, so faults waiting for events are reached without idle watches.
            jobs.append(cluster.launch(f"t{len(jobs)}", "fail" if len(jobs) % 2 else "succeed"))
            return not simulator.faults.active()

        wait_until(launch_until_every_fault_was_hit, "every fault to be hit", timeout=20, interval=0.2)
        cluster.wait_finished(*jobs, timeout=20)
    assert [fault.hits for fault in faults] == [2, 1, 1, 1, 1]
    assert watcher.stats.terms == 1
    assert watcher.stats.relists >= 2, "the first list and the one after the expiry"
    outcomes = cluster.outcomes()
    for job_id in jobs:
        states = [seen[0] for seen in outcomes[job_id]]
        assert len(states) == len(set(states)), f"{job_id} reported twice: {outcomes[job_id]}"
        assert states[-1] in ("success", "failed")


def test_a_redis_crash_is_survived_and_events_met_meanwhile_are_replayed(
    cluster: Cluster, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with watching(cluster.config):
        before = cluster.launch("before")
        cluster.wait_finished(before)
        redis_server.stop(hard=True)
        try:  # pods change while the watcher cannot write anything
            during = [
                cluster.launch("during-ok", record=False),
                cluster.launch("during-bad", "fail", record=False),
            ]
            wait_until(lambda: "Redis error" in caplog.text, "the watcher to meet the outage")
        finally:
            redis_server.start()
        cluster.wait_finished(*during, timeout=20)
        after = cluster.launch("after")
        cluster.wait_finished(after)
    assert cluster.outcomes() == {
        before: [RUNNING, ("success", "Completed", 0)],
        during[0]: [RUNNING, ("success", "Completed", 0)],
        during[1]: [RUNNING, ("failed", "Error", 1)],
        after: [RUNNING, ("success", "Completed", 0)],
    }


# --- leader election ----------------------------------------------------------------------------------


def test_only_the_leader_acts_and_a_standby_takes_over_when_it_stops(cluster: Cluster) -> None:
    with (
        watching(cluster.config, "w1", wait_leading=False) as w1,
        watching(cluster.config, "w2", wait_leading=False) as w2,
    ):
        wait_until(
            lambda: cluster.leader() is not None and watching_from_checkpoint(cluster.config), "a leader"
        )
        leader, standby = (w1, w2) if cluster.leader() == "w1" else (w2, w1)
        first = [cluster.launch("a"), cluster.launch("b", "fail")]
        cluster.wait_finished(*first)
        assert (standby.stats.terms, standby.stats.events, standby.stats.relists, standby.stats.sweeps) == (
            0,
            0,
            0,
            0,
        )
        assert leader.stats.events > 0
        leader.stop()
        took = wait_until(lambda: cluster.leader() == standby.name, "the standby to take over", timeout=5)
        assert took < cluster.config.watcher_lease_seconds, "a released lease is taken at the next poll"
        events_of_old_leader = leader.stats.events
        second = [cluster.launch("c"), cluster.launch("d", "oom")]
        cluster.wait_finished(*second)
        assert leader.stats.events == events_of_old_leader
        assert standby.stats.terms == 1
        assert standby.stats.relists == 0, "the standby resumes from the leader's checkpoint"
    outcomes = cluster.outcomes()
    assert outcomes == {
        first[0]: [RUNNING, ("success", "Completed", 0)],
        first[1]: [RUNNING, ("failed", "Error", 1)],
        second[0]: [RUNNING, ("success", "Completed", 0)],
        second[1]: [RUNNING, ("failed", "OOMKilled", 137)],
    }


def test_a_watcher_that_loses_its_lease_stands_by_until_it_wins_it_back(cluster: Cluster) -> None:
    with watching(cluster.config) as watcher:
        first = cluster.launch("first")
        cluster.wait_finished(first)
        cluster.redis.set(cluster.keys.watcher_leader(NAMESPACE), "usurper", px=60_000)
        wait_until(lambda: not watcher.lease.held(), "the watcher to notice at its next renewal", timeout=5)
        missed = cluster.launch("missed")
        cluster.wait_pods_ended(missed)
        time.sleep(1)  # a negative cannot be awaited: give a (wrongly) acting watcher time to report
        assert missed not in cluster.outcomes(), "a watcher without the lease must not act"
        cluster.redis.delete(cluster.keys.watcher_leader(NAMESPACE))
        cluster.wait_finished(missed)
        assert watcher.stats.terms == 2
    assert cluster.outcomes()[missed] == [RUNNING, ("success", "Completed", 0)]


# --- the command --------------------------------------------------------------------------------------


@contextmanager
def watcher_processes(
    config: KubeConfig, tmp_path: Path, *names: str
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    config_file = tmp_path / "kbridge.cfg"
    config_file.write_text(config.as_ini())
    kbridge = str(Path(sys.executable).with_name("kbridge"))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        for name in names:
            with (tmp_path / f"{name}.log").open("wb") as log:
                processes[name] = subprocess.Popen(
                    [kbridge, "watcher", "--config", str(config_file), "--name", name],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        yield processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


def log_of(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.log").read_text()


def test_kbridge_watcher_reports_and_stops_cleanly_on_sigterm(cluster: Cluster, tmp_path: Path) -> None:
    with watcher_processes(cluster.config, tmp_path, "cli-1") as processes:
        wait_until(
            lambda: cluster.leader() == "cli-1" and cluster.checkpoint() is not None, "cli-1", timeout=20
        )
        job_id = cluster.launch("cli", "fail", exit_code=4)
        cluster.wait_finished(job_id)
        processes["cli-1"].send_signal(signal.SIGTERM)
        assert processes["cli-1"].wait(timeout=5) == 0, log_of(tmp_path, "cli-1")
    assert cluster.leader() is None, "a stopping watcher releases its lease"
    assert cluster.outcomes()[job_id] == [RUNNING, ("failed", "Error", 4)]
    assert "received SIGTERM" in log_of(tmp_path, "cli-1")
    assert "Traceback" not in log_of(tmp_path, "cli-1")


def test_a_killed_leader_is_replaced_within_the_lease(cluster: Cluster, tmp_path: Path) -> None:
    with watcher_processes(cluster.config, tmp_path, "cli-1", "cli-2") as processes:
        wait_until(lambda: cluster.checkpoint() is not None, "a leader among the commands", timeout=20)
        leader = cluster.leader()
        assert leader is not None
        standby = "cli-2" if leader == "cli-1" else "cli-1"
        first = cluster.launch("first")
        cluster.wait_finished(first)
        processes[leader].kill()
        killed_at = time.monotonic()
        during = [cluster.launch("during"), cluster.launch("during-bad", "fail")]  # nobody watches now
        wait_until(lambda: cluster.leader() == standby, "the standby to take over", timeout=10)
        took_over = time.monotonic() - killed_at
        cluster.wait_finished(*during)
        assert processes[standby].poll() is None
    lease = cluster.config.watcher_lease_seconds
    assert took_over < lease + 1.5, f"takeover took {took_over:.1f} s with a {lease} s lease"
    assert cluster.outcomes() == {
        first: [RUNNING, ("success", "Completed", 0)],
        during[0]: [RUNNING, ("success", "Completed", 0)],
        during[1]: [RUNNING, ("failed", "Error", 1)],
    }
    assert "Traceback" not in log_of(tmp_path, standby)


def test_bad_arguments_are_explained_without_a_traceback(tmp_path: Path) -> None:
    kbridge = str(Path(sys.executable).with_name("kbridge"))
    env = {name: value for name, value in os.environ.items() if not name.startswith("KBRIDGE")}

    def run(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kbridge, "watcher", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**env, **settings},
        )

    result = run("--namespace", "Not_A_Namespace")
    assert (result.returncode, result.stdout) == (2, "")
    assert "--namespace 'Not_A_Namespace' is not a namespace name" in result.stderr
    broken = tmp_path / "broken-kubeconfig.yaml"
    broken.write_text("clusters: [\n")
    result = run(KBRIDGE__KUBERNETES__IN_CLUSTER="False", KBRIDGE__KUBERNETES__CONFIG_FILE=str(broken))
    assert result.returncode == 2
    assert f"cannot configure the Kubernetes client from kubeconfig {broken}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_finished_pod_is_kept_while_its_launch_job_may_still_run(
    bridge_config: MakeConfig, redis_client: redis.Redis
) -> None:
    # Deleting the pod would free its name for a still running launch job to create a second pod.
    config = fast_config(bridge_config, worker_pods_pending_timeout="2")  # a sweep every second
    cluster = Cluster(config, redis_client)
    job_id = job_id_for(TaskKey("dag", "late", "run"))
    redis_client.hset(Keys.rq_job(job_id), "status", "started")
    with watching(config) as watcher:
        cluster.launch("late")
        cluster.wait_finished(job_id)
        sweeps = watcher.stats.sweeps
        wait_until(lambda: watcher.stats.sweeps >= sweeps + 2, "two sweeps after the outcome")
        assert job_id in cluster.pods()
        redis_client.hset(Keys.rq_job(job_id), "status", "finished")
        wait_until(lambda: job_id not in cluster.pods(), "the sweep to delete the pod once its job ended")
    assert cluster.outcomes()[job_id] == [RUNNING, ("success", "Completed", 0)]


def test_default_watcher_names_differ_per_process_start(bridge_config: MakeConfig) -> None:
    config = fast_config(bridge_config)
    first, second = Watcher(config), Watcher(config)
    assert first.name != second.name
    assert first.name.startswith(f"kbridge-watcher-{socket.gethostname()}-{os.getpid()}-")
    assert first.lease.holder == first.name


class SlowDeletes:
    """The real CoreV1Api, except that pod deletions wait until ``release`` is set."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self.release = threading.Event()
        self.waiting = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def delete_namespaced_pod(self, *args: Any, **kwargs: Any) -> Any:
        self.waiting.set()
        assert self.release.wait(20), "the test never released the deletion"
        return self._api.delete_namespaced_pod(*args, **kwargs)


def test_a_slow_pod_deletion_does_not_hold_up_other_outcomes(cluster: Cluster) -> None:
    api = SlowDeletes(core_v1(cluster.config))
    with watching(cluster.config, api=api):
        first = cluster.launch("first")
        cluster.wait_finished(first)
        assert api.waiting.wait(10), "the watcher never tried to delete the finished pod"
        second = cluster.launch("second", "fail", exit_code=4)
        cluster.wait_finished(second)  # reported while the first pod's deletion is still blocked
        assert first in cluster.pods()
        assert cluster.outcomes()[second][-1] == ("failed", "Error", 4)
        api.release.set()
        wait_until(lambda: first not in cluster.pods(), "the first pod to be deleted")


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "deleted"])
def test_a_finished_pods_launch_secret_is_deleted_and_no_other_secret(
    bridge_config: MakeConfig, redis_client: redis.Redis, keep: bool
) -> None:
    config = fast_config(bridge_config, delete_worker_pods=str(not keep))
    cluster = Cluster(config, redis_client)
    secret_name = "airflow-db"
    cluster.api.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": secret_name}, "stringData": {"k": "v"}}
    )
    jobs = []
    for task in ("own", "forged"):
        key = TaskKey("dag", task, "run")
        pod = build_worker_pod(key, ["true"], None, config, secret_env=("TOKEN",))
        if task == "forged":  # an annotation naming any Secret but the pod's own is not the bridge's
            pod["metadata"]["annotations"][LAUNCH_SECRET_ANNOTATION] = secret_name
            pod["spec"]["containers"][0]["env"] = []
        else:
            cluster.api.create_namespaced_secret(NAMESPACE, build_launch_secret(key, {"TOKEN": b"t"}, config))
        cluster.records.advance(TryRecord(key, TryState.QUEUED, queue="default"))
        cluster.api.create_namespaced_pod(NAMESPACE, pod)
        cluster.records.advance(TryRecord(key, TryState.LAUNCHED, pod=job_id_for(key), namespace=NAMESPACE))
        jobs.append(job_id_for(key))
    with watching(config):
        cluster.wait_finished(*jobs)
        wait_until(
            lambda: (
                [secret.metadata.name for secret in cluster.api.list_namespaced_secret(NAMESPACE).items]
                == [secret_name]
            ),
            "the finished pod's launch Secret to be deleted",
        )
        wait_until(
            lambda: set(cluster.pods()) == (set(jobs) if keep else set()), "the pods to be kept or deleted"
        )
    if keep:
        assert all(labels.get(DONE_LABEL) == "true" for labels in cluster.pods().values())


def secret_pod(cluster: Cluster, task: str, *, outcome: str = "succeed", run_seconds: int = 0) -> str:
    """A launched try whose launch Secret the pod does not own (its owner patch failed, or never ran)."""
    key = TaskKey("dag", task, "run")
    annotations = {"sim.kbridge.io/outcome": outcome, "sim.kbridge.io/run-seconds": str(run_seconds)}
    override = parse_executor_config({"pod_override": {"metadata": {"annotations": annotations}}})
    pod = build_worker_pod(key, ["true"], override, cluster.config, secret_env=("TOKEN",))
    cluster.api.create_namespaced_secret(NAMESPACE, build_launch_secret(key, {"TOKEN": b"t"}, cluster.config))
    cluster.records.advance(TryRecord(key, TryState.QUEUED, queue="default"))
    cluster.api.create_namespaced_pod(NAMESPACE, pod)
    cluster.records.advance(TryRecord(key, TryState.LAUNCHED, pod=job_id_for(key), namespace=NAMESPACE))
    return job_id_for(key)


def secrets_left(cluster: Cluster) -> list[str]:
    return [secret.metadata.name for secret in cluster.api.list_namespaced_secret(NAMESPACE).items]


@pytest.mark.parametrize("grace", [0, 30], ids=["deleted", "being-deleted"])
def test_a_hand_deleted_pods_launch_secret_is_deleted(
    bridge_config: MakeConfig, redis_client: redis.Redis, grace: int
) -> None:
    config = fast_config(bridge_config)
    cluster = Cluster(config, redis_client)
    with watching(config):
        job_id = secret_pod(cluster, "deleted-by-hand", run_seconds=600)
        wait_until(lambda: cluster.phases(job_id) == ["Running"], "the pod to run")
        cluster.api.delete_namespaced_pod(job_id, NAMESPACE, grace_period_seconds=grace)
        wait_until(lambda: secrets_left(cluster) == [], "the launch Secret of the deleted pod to be deleted")


def test_a_pod_whose_secret_cannot_be_deleted_is_kept_until_the_sweep_deletes_both(
    bridge_config: MakeConfig, redis_client: redis.Redis, simulator: Simulator
) -> None:
    config = fast_config(bridge_config, delete_worker_pods="True")
    cluster = Cluster(config, redis_client)
    fault = simulator.faults.inject(verb="delete", resource="secrets", status=503, count=None)
    with watching(config):
        job_id = secret_pod(cluster, "kept")
        cluster.wait_finished(job_id)
        wait_until(lambda: fault.hits >= 2, "the sweep to try the Secret again")
        assert job_id in cluster.pods()  # deleting it would lose the only pointer to its Secret
        simulator.faults.clear()
        wait_until(lambda: secrets_left(cluster) == [] and cluster.pods() == {}, "the Secret, then the pod")
