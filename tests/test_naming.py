"""Names and label values are valid for any id, equal to Airflow's where those are valid; keys round-trip."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from bridge.errors import UserInputError
from bridge.naming import (
    DAG_ID_KEY,
    MAP_INDEX_KEY,
    TRY_NUMBER_KEY,
    create_pod_id,
    datetime_to_label_safe_datestring,
    is_config_key,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_env_var_name,
    is_qualified_name,
    is_valid_label_value,
    label_safe_datestring_to_datetime,
    make_safe_label_value,
    make_safe_pod_id,
    strip_unsafe_kubernetes_special_chars,
    task_key_annotations,
    task_key_from_annotations,
    task_key_labels,
    task_key_selector,
)
from bridge.sim.cluster import Simulator
from bridge.task_key import TaskKey, TaskKeyError

# The Kubernetes rules, written out here independently of bridge.naming.
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

TRICKY_IDS = [
    "",
    "-",
    "!!!",
    "日本語",
    "👍🏽🚀",
    "مرحبا بالعالم",
    "a\x00b",
    "İstanbul",
    "\u212a",
    "a" * 300,
    "_a_",
]
ids = st.one_of(
    st.sampled_from(TRICKY_IDS),
    st.text(max_size=80),
    st.text(min_size=200, max_size=400),
    st.text(alphabet="aA0-_. ~", max_size=80),
)
non_empty_ids = ids.filter(bool)
task_keys = st.builds(
    TaskKey,
    dag_id=non_empty_ids,
    task_id=non_empty_ids,
    run_id=non_empty_ids,
    try_number=st.integers(min_value=0, max_value=10**6),
    map_index=st.integers(min_value=-1, max_value=10**6),
)


def md5_9(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:9]


def airflow_label_value(value: str) -> str:
    """Reference: the algorithm documented for Airflow's make_safe_label_value, applied literally."""
    stripped = re.sub(r"^[^a-z0-9A-Z]*|[^a-zA-Z0-9_\-\.]|[^a-z0-9A-Z]*$", "", value)
    if stripped == value and len(stripped) <= 63:
        return stripped
    return f"{stripped[:53]}-{md5_9(value)}"


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and LABEL_VALUE.fullmatch(value) is not None


def selects(selector: str, labels: dict[str, str]) -> bool:
    """Evaluate the two selector forms the bridge emits: ``key=value`` and ``!key`` (label absent)."""
    for term in selector.split(","):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        else:
            name, _, value = term.partition("=")
            if labels.get(name) != value:
                return False
    return True


# --- the Kubernetes syntax rules ---------------------------------------------------------------------------

SUBDOMAIN_253 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
RULE_CASES: list[tuple[Callable[[str], bool], str, bool]] = [
    (is_valid_label_value, "", True),
    (is_valid_label_value, "a" * 63, True),
    (is_valid_label_value, "a" * 64, False),
    (is_valid_label_value, "A-b_c.9", True),
    (is_valid_label_value, "-a", False),
    (is_valid_label_value, "a.", False),
    (is_valid_label_value, "é", False),
    (is_dns1123_label, "a" * 63, True),
    (is_dns1123_label, "a" * 64, False),
    (is_dns1123_label, "team-a", True),
    (is_dns1123_label, "team.a", False),
    (is_dns1123_label, "Team", False),
    (is_dns1123_label, "", False),
    (is_dns1123_subdomain, SUBDOMAIN_253, True),
    (is_dns1123_subdomain, SUBDOMAIN_253 + "d", False),
    (is_dns1123_subdomain, "airflow.secrets-1", True),
    (is_dns1123_subdomain, "a..b", False),
    (is_qualified_name, "team", True),
    (is_qualified_name, "example.com/team", True),
    (is_qualified_name, "a" * 63, True),
    (is_qualified_name, "a" * 64, False),
    (is_qualified_name, f"{SUBDOMAIN_253}/{'n' * 63}", True),
    (is_qualified_name, "/team", False),
    (is_qualified_name, "Example.com/team", False),
    (is_qualified_name, "example.com/", False),
    (is_env_var_name, "AIRFLOW__CORE__DEBUG", True),
    (is_env_var_name, "my.var-1", True),
    (is_env_var_name, "1ST", False),
    (is_env_var_name, "A B", False),
    (is_env_var_name, "A=B", False),
    (is_config_key, "sql_alchemy_conn", True),
    (is_config_key, ".dockerconfigjson", True),
    (is_config_key, "k" * 253, True),
    (is_config_key, "k" * 254, False),
    (is_config_key, "a/b", False),
    (is_config_key, "", False),
]


@pytest.mark.parametrize(
    ("rule", "text", "valid"),
    RULE_CASES,
    ids=[f"{rule.__name__}-{text[:20]!r}" for rule, text, _ in RULE_CASES],
)
def test_kubernetes_syntax_rules_at_their_boundaries(
    rule: Callable[[str], bool], text: str, valid: bool
) -> None:
    assert rule(text) is valid


# --- label values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("my_dag", "my_dag"),
        ("Extract.Step-1", "Extract.Step-1"),
        ("a" * 63, "a" * 63),
        ("", ""),
        ("a" * 64, "a" * 53 + "-" + md5_9("a" * 64)),
        ("a" * 31 + "." + "b" * 31, "a" * 31 + "." + "b" * 31),  # 63 with punctuation inside: kept
        ("a" * 62 + "-", "a" * 53 + "-" + md5_9("a" * 62 + "-")),  # 63, but ends with "-": changed
        ("-" + "a" * 63, "a" * 53 + "-" + md5_9("-" + "a" * 63)),  # 64, 63 once stripped: still hashed
        ("a" * 52 + "." + "b" * 20, "a" * 52 + ".-" + md5_9("a" * 52 + "." + "b" * 20)),  # cut after a "."
        ("~~x~~", "x-" + md5_9("~~x~~")),
        ("my dag", "mydag-" + md5_9("my dag")),
        ("_a_", "a-" + md5_9("_a_")),
        ("café", "caf-" + md5_9("café")),
        (
            "manual__2024-01-01T00:00:00+00:00",
            "manual__2024-01-01T0000000000-" + md5_9("manual__2024-01-01T00:00:00+00:00"),
        ),
    ],
)
def test_label_values_match_airflow(value: str, expected: str) -> None:
    assert make_safe_label_value(value) == expected


@pytest.mark.parametrize("value", ["!!!", "日本", "-", "._-"])
def test_label_value_with_nothing_alphanumeric_gets_a_letter_where_airflow_is_invalid(value: str) -> None:
    assert not is_label_value(airflow_label_value(value))  # Airflow gives "-<hash>"
    assert make_safe_label_value(value) == "x-" + md5_9(value)


@settings(max_examples=400, deadline=None)
@given(ids)
def test_label_value_is_always_valid_and_identical_to_airflow_where_airflow_is_valid(value: str) -> None:
    ours = make_safe_label_value(value)
    assert is_label_value(ours)
    airflow = airflow_label_value(value)
    if is_label_value(airflow):
        assert ours == airflow
    else:  # the only way Airflow's value is invalid: nothing alphanumeric survived
        assert airflow == "-" + md5_9(value)


def test_label_value_of_lone_surrogate_is_valid_instead_of_crashing() -> None:
    assert is_label_value(make_safe_label_value("a\ud800b"))


# --- pod names ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(task_keys)
def test_pod_name_is_a_valid_dns_name_of_at_most_63_characters(key: TaskKey) -> None:
    name = create_pod_id(key)
    assert len(name) <= 63
    assert DNS1123_SUBDOMAIN.fullmatch(name)
    assert "." not in name  # also a DNS-1123 label, so it is usable as the pod's hostname


@settings(max_examples=100, deadline=None)
@given(task_keys, st.sampled_from(TaskKey._fields), st.data())
def test_pod_name_changes_when_any_key_field_changes(key: TaskKey, field: str, data: st.DataObject) -> None:
    strategy = st.integers(min_value=-1, max_value=10**6) if field in ("try_number", "map_index") else ids
    new_value: Any = data.draw(strategy.filter(lambda value: value != getattr(key, field)))
    other = key._replace(**{field: new_value})
    assert create_pod_id(other) != create_pod_id(key)


@pytest.mark.parametrize(
    "dag_and_task", [("etl", "load"), ("d" * 200, "t" * 200)], ids=["short", "truncated"]
)
def test_tries_that_differ_only_in_run_id_map_index_or_try_number_get_distinct_names(
    dag_and_task: tuple[str, str],
) -> None:
    key = TaskKey(*dag_and_task, "scheduled__2024-05-01T00:00:00+00:00", 1, -1)
    tries = [
        key,
        key._replace(run_id="scheduled__2024-05-02T00:00:00+00:00"),
        key._replace(run_id="scheduled__2024-05-01T00:00:00+00:00 "),
        key._replace(map_index=0),
        key._replace(map_index=1),
        key._replace(try_number=2),
        key._replace(try_number=0),
        key._replace(try_number=2, map_index=1),
    ]
    names = [create_pod_id(each) for each in tries]
    assert len(set(names)) == len(tries)
    assert len({name.rsplit("-", 1)[0] for name in names}) == 1, "the same readable dag/task prefix"
    assert all(len(name) <= 63 for name in names)
    assert names == [create_pod_id(each) for each in tries], "and the same name every time"


def test_pod_name_keeps_field_boundaries_apart() -> None:
    first, second = create_pod_id(TaskKey("a-b", "c", "r")), create_pod_id(TaskKey("ab", "c", "r"))
    assert first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0] == "ab-c"  # same readable part ...
    assert first != second  # ... yet distinct, because the hash covers the raw fields
    assert create_pod_id(TaskKey("a", "bc", "r")) != create_pod_id(TaskKey("ab", "c", "r"))


def test_pod_name_is_readable_and_hash_suffixed() -> None:
    name = create_pod_id(TaskKey("My_DAG", "extract.Step-1", "manual__2024-01-01", 2))
    prefix, suffix = name.rsplit("-", 1)
    assert prefix == "mydag-extractstep1"
    assert re.fullmatch(r"[0-9a-f]{16}", suffix)


@pytest.mark.parametrize("unusable", ["", "!!!", "日本語", "👍🏽"])
def test_pod_name_falls_back_to_task_when_ids_have_no_ascii_alphanumerics(unusable: str) -> None:
    name = create_pod_id(TaskKey(unusable, unusable, "run"))
    assert name.startswith("task-")
    assert DNS1123_SUBDOMAIN.fullmatch(name)


def test_pod_name_of_long_ids_is_cut_to_63_without_a_dangling_dash() -> None:
    # 63 = 46 readable characters + "-" + 16 hash digits
    assert create_pod_id(TaskKey("d" * 44, "t" * 200, "run")).startswith("d" * 44 + "-t-")
    assert len(create_pod_id(TaskKey("d" * 44, "t" * 200, "run"))) == 63
    cut_at_the_dash = create_pod_id(TaskKey("d" * 45, "t" * 200, "run"))
    assert cut_at_the_dash.startswith("d" * 45 + "-")
    assert "--" not in cut_at_the_dash
    assert len(cut_at_the_dash) == 62


def test_pod_name_is_the_same_in_another_interpreter_with_another_hash_seed() -> None:
    key = TaskKey("dag", "task", "scheduled__2024-05-01T00:00:00+00:00", 3, 7)
    program = "from bridge.naming import create_pod_id; from bridge.task_key import TaskKey; "
    program += f"print(create_pod_id(TaskKey(*{tuple(key)!r})))"
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, env=environment
    )
    assert result.stdout.strip() == create_pod_id(key)


def test_100_000_distinct_keys_give_100_000_distinct_pod_names() -> None:
    generator = random.Random(20240501)
    alphabet = "ab-_."  # a small alphabet makes keys that differ only by punctuation, the hard case
    keys = {
        TaskKey(
            "".join(generator.choices(alphabet, k=generator.randint(1, 6))),
            "".join(generator.choices(alphabet, k=generator.randint(1, 6))),
            "".join(generator.choices(alphabet, k=generator.randint(1, 4))),
            generator.randint(0, 3),
            generator.randint(-1, 2),
        )
        for _ in range(130_000)
    }
    keys = set(list(keys)[:100_000])
    assert len(keys) == 100_000
    names = {create_pod_id(key) for key in keys}
    assert len(names) == 100_000


def test_make_safe_pod_id_joins_stripped_ids_and_suffix() -> None:
    assert make_safe_pod_id("mydag", "mytask", "0123abcd") == "mydag-mytask-0123abcd"
    assert make_safe_pod_id("My Dag!", "", "abc") == "mydag-abc"
    assert make_safe_pod_id("dag", "task", "s" * 61) == "d-" + "s" * 61


@pytest.mark.parametrize("suffix", ["", "ABC", "a-b", "é1", "s" * 62])
def test_make_safe_pod_id_rejects_a_suffix_that_cannot_end_a_pod_name(suffix: str) -> None:
    with pytest.raises(ValueError, match="suffix") as caught:
        make_safe_pod_id("dag", "task", suffix)
    assert repr(suffix) in str(caught.value)


def test_strip_unsafe_keeps_lowercased_alphanumerics_like_airflow() -> None:
    assert strip_unsafe_kubernetes_special_chars("My_Dag-1.x y!") == "mydag1xy"
    assert strip_unsafe_kubernetes_special_chars("Ünï") == "ünï"  # Airflow keeps non-ASCII; pod names do not


# --- task key metadata --------------------------------------------------------------------------------------


def test_labels_and_annotations_of_a_mapped_try() -> None:
    key = TaskKey("my_dag", "my_task", "manual__2024", 2, 3)
    assert task_key_labels(key) == {
        "dag_id": "my_dag",
        "task_id": "my_task",
        "run_id": "manual__2024",
        "try_number": "2",
        "map_index": "3",
        "kubernetes_executor": "True",
    }
    assert task_key_annotations(key) == {
        "dag_id": "my_dag",
        "task_id": "my_task",
        "run_id": "manual__2024",
        "try_number": "2",
        "map_index": "3",
    }


def test_unmapped_try_has_no_map_index_label_or_annotation_as_in_airflow() -> None:
    key = TaskKey("d", "t", "r", 1, -1)
    assert MAP_INDEX_KEY not in task_key_labels(key)
    assert MAP_INDEX_KEY not in task_key_annotations(key)
    assert task_key_from_annotations({"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": "1"}) == key


@settings(max_examples=300, deadline=None)
@given(task_keys)
def test_labels_are_valid_and_annotations_round_trip(key: TaskKey) -> None:
    assert all(is_label_value(value) for value in task_key_labels(key).values())
    assert task_key_from_annotations(task_key_annotations(key)) == key


@settings(max_examples=200, deadline=None)
@given(task_keys)
def test_selector_matches_exactly_this_try(key: TaskKey) -> None:
    selector = task_key_selector(key)
    assert selects(selector, task_key_labels(key))
    siblings = [
        key._replace(try_number=key.try_number + 1),
        key._replace(map_index=key.map_index + 1),
        key._replace(task_id=key.task_id + "_other"),
        key._replace(run_id=key.run_id + "_other"),
    ]
    for sibling in siblings:
        assert not selects(selector, task_key_labels(sibling)), sibling
    names = [term.lstrip("!").partition("=")[0] for term in selector.split(",")]
    assert names == sorted(names)


def test_selector_of_an_unmapped_try_requires_map_index_to_be_absent() -> None:
    selector = task_key_selector(TaskKey("d", "t", "r", 1))
    assert selector == "dag_id=d,kubernetes_executor=True,!map_index,run_id=r,task_id=t,try_number=1"


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({"task_id": "t", "run_id": "r", "try_number": "1"}, DAG_ID_KEY),
        ({"dag_id": "", "task_id": "t", "run_id": "r", "try_number": "1"}, DAG_ID_KEY),
        ({"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": "one"}, TRY_NUMBER_KEY),
        ({"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": "-1"}, TRY_NUMBER_KEY),
        ({"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": "1", "map_index": "-2"}, MAP_INDEX_KEY),
        ({"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": "1", "map_index": "٣"}, MAP_INDEX_KEY),
    ],
)
def test_bad_annotations_are_named_in_the_error(annotations: dict[str, str], named: str) -> None:
    with pytest.raises(TaskKeyError, match=f"annotation '{named}'"):
        task_key_from_annotations(annotations)


def test_missing_annotations_give_a_clear_error() -> None:
    with pytest.raises(TaskKeyError, match="pod annotations must be a mapping"):
        task_key_from_annotations(None)


def test_a_bad_task_key_is_user_input_so_the_cli_and_workers_report_it_without_a_traceback() -> None:
    with pytest.raises(UserInputError, match="task key must be a JSON object, got list") as error:
        TaskKey.from_dict(["d", "t", "r"])
    assert isinstance(error.value, ValueError), "callers catching ValueError keep working"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"task_id": "t", "run_id": "r"}, "dag_id"),
        ({"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": True}, "try_number"),
        ({"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": -2}, "map_index"),
    ],
)
def test_task_key_from_json_names_the_bad_field(data: object, named: str) -> None:
    with pytest.raises(TaskKeyError, match=f"field '{named}'"):
        TaskKey.from_dict(data)


def test_task_key_round_trips_through_json() -> None:
    key = TaskKey("d", "t", "r", 3, 2)
    assert TaskKey.from_dict(json.loads(json.dumps(key.as_dict()))) == key


def test_api_server_accepts_the_metadata_and_the_selector_finds_exactly_one_try(tmp_path: Path) -> None:
    """Real client over HTTP: the metadata passes API validation; creating the pod again gives a 409."""
    key = TaskKey("Ünïcode DAG 🚀", "extract.step-1", "manual__2024-01-01T00:00:00+00:00", 2)
    siblings = [
        key._replace(try_number=3),
        key._replace(map_index=0),
        key._replace(task_id="extract.step-1 "),  # same label prefix, different md5 suffix
        key._replace(dag_id="ünïcode dag"),
    ]

    def pod(of: TaskKey) -> client.V1Pod:
        return client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=create_pod_id(of), labels=task_key_labels(of), annotations=task_key_annotations(of)
            ),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="base", image="busybox", command=["true"])],
                restart_policy="Never",
            ),
        )

    with Simulator(kubeconfig=tmp_path / "kubeconfig", seed=1) as cluster:
        core_v1 = cluster.core_v1()
        for each in [key, *siblings]:
            core_v1.create_namespaced_pod("default", pod(each))
        with pytest.raises(client.ApiException) as repeated:
            core_v1.create_namespaced_pod("default", pod(key))
        assert repeated.value.status == 409
        found = core_v1.list_namespaced_pod("default", label_selector=task_key_selector(key)).items
        assert len(found) == 1
        assert found[0].metadata is not None
        assert found[0].metadata.name == create_pod_id(key)
        assert task_key_from_annotations(found[0].metadata.annotations) == key


# --- datetimes in labels ------------------------------------------------------------------------------------

# Whole seconds: time zones (the tz database, ISO 8601) have no sub-second offsets, and Python's ISO form
# of one does not read back.
_DAY_SECONDS = 23 * 3600 + 59 * 60
fixed_offsets = st.integers(-_DAY_SECONDS, _DAY_SECONDS).map(
    lambda seconds: timezone(timedelta(seconds=seconds))
)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2019, 1, 1, tzinfo=UTC), "2019-01-01T00_00_00_plus_00_00"),
        (
            datetime(2019, 1, 1, 12, 30, 5, 42, tzinfo=timezone(-timedelta(hours=5))),
            "2019-01-01T12_30_05.000042-05_00",
        ),
        (
            datetime(2019, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=45))),
            "2019-01-01T00_00_00_plus_05_45",
        ),
        (datetime(2019, 1, 1, 8), "2019-01-01T08_00_00"),
    ],
)
def test_datestring_examples(moment: datetime, expected: str) -> None:
    assert datetime_to_label_safe_datestring(moment) == expected
    assert label_safe_datestring_to_datetime(expected) == moment


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.none() | st.just(UTC) | fixed_offsets | st.timezones()))
def test_datestring_round_trip_is_exact_and_label_safe(moment: datetime) -> None:
    text = datetime_to_label_safe_datestring(moment)
    assert is_label_value(text)
    decoded = label_safe_datestring_to_datetime(text)
    assert decoded.replace(tzinfo=None) == moment.replace(tzinfo=None)  # wall time incl. microseconds
    assert decoded.utcoffset() == moment.utcoffset()  # None for a naive datetime


@pytest.mark.parametrize(
    ("zone", "wall_time", "fold", "offset_hours"),
    [
        ("America/New_York", datetime(2024, 11, 3, 1, 30, 0, 123456), 0, -4),  # the first 01:30 (EDT)
        ("America/New_York", datetime(2024, 11, 3, 1, 30, 0, 123456), 1, -5),  # the repeated 01:30 (EST)
        ("Europe/Berlin", datetime(2024, 3, 31, 3, 0), 0, 2),  # just after the spring-forward gap
        ("Australia/Lord_Howe", datetime(2024, 4, 7, 1, 45), 1, 10.5),  # a 30-minute DST shift
        ("Asia/Kathmandu", datetime(2024, 6, 1, 12, 0, 0, 1), 0, 5.75),
    ],
)
def test_datestring_round_trip_across_dst_keeps_the_instant_and_the_offset(
    zone: str, wall_time: datetime, fold: int, offset_hours: float
) -> None:
    moment = wall_time.replace(tzinfo=ZoneInfo(zone), fold=fold)
    assert moment.utcoffset() == timedelta(hours=offset_hours)
    text = datetime_to_label_safe_datestring(moment)
    assert is_label_value(text)
    decoded = label_safe_datestring_to_datetime(text)
    assert decoded.timestamp() == moment.timestamp()  # same instant, to the microsecond
    assert decoded.utcoffset() == moment.utcoffset()
    assert decoded.replace(tzinfo=None) == wall_time


def test_bad_datestring_error_names_the_value_and_the_expected_form() -> None:
    with pytest.raises(ValueError, match=r"'yesterday' is not a label-safe datestring.*2019-01-01T00_00_00"):
        label_safe_datestring_to_datetime("yesterday")
