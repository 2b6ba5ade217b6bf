"""Label and field selectors, parsed and matched the way kube-apiserver does.

Why exact: the bridge's watcher and the executor's adoption logic find their pods by selector. A simulator
that ignores a selector (as kmock does) or accepts a malformed one hides real bugs, so every operator of the
label grammar is supported, only the fields the real server indexes may be used in a field selector, and
anything else is rejected with the server's 400 wording.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[dict[str, Any]], bool]


class SelectorError(ValueError):
    """A selector that does not parse; the message is the BadRequest text the API server answers with."""


_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_KEY = r"(?P<key>[^\s!=<>(),]+)"
_SET_TERM = re.compile(rf"^{_KEY}\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQUALITY_TERM = re.compile(rf"^{_KEY}\s*(?P<op>==|!=|=)\s*(?P<value>[^\s!=<>(),]*)$")
_NUMERIC_TERM = re.compile(rf"^{_KEY}\s*(?P<op>[<>])\s*(?P<value>\S*)$")
_EXISTS_TERM = re.compile(rf"^(?P<op>!?)\s*{_KEY}$")


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid label/annotation key (``[prefix/]name``), or None if it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "prefix part must be non-empty"
    if "/" in prefix:
        return (
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and "
            "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
            "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix "
            "and '/' (e.g. 'example.com/MyName')"
        )
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain of at most 253 characters"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _LABEL_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
            "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
            "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None if it is."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.match(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
            "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    return None


def parse_label_selector(selector: str) -> Callable[[Mapping[str, str]], bool]:
    """Compile a label selector (``a=b,c in (d,e),!f,g>3``) into a predicate over a labels mapping."""
    requirements = [_parse_requirement(term.strip()) for term in _split_terms(selector)]
    return lambda labels: all(requirement(labels) for requirement in requirements)


def _split_terms(selector: str) -> list[str]:
    """Split on the commas that separate requirements (not those inside an ``in (...)`` set)."""
    if not selector.strip():
        return []
    terms: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(selector):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            terms.append(selector[start:index])
            start = index + 1
    terms.append(selector[start:])
    return terms


def _parse_requirement(term: str) -> Callable[[Mapping[str, str]], bool]:
    if not term:
        raise SelectorError("unable to parse requirement: found ',', expected: identifier")
    if match := _SET_TERM.match(term):
        key, values = match["key"], [value.strip() for value in match["values"].split(",")]
        _check_key(key)
        if values == [""]:
            raise SelectorError(
                f"unable to parse requirement: for 'in', 'notin' operators, values set can't be empty "
                f"(in {term!r})"
            )
        for value in values:
            _check_value(value)
        allowed = frozenset(values)
        if match["op"] == "in":
            return lambda labels: labels.get(key) in allowed
        return lambda labels: labels.get(key) not in allowed
    if match := _EQUALITY_TERM.match(term):
        key, value = match["key"], match["value"]
        _check_key(key)
        _check_value(value)
        if match["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _NUMERIC_TERM.match(term):
        key, text = match["key"], match["value"]
        _check_key(key)
        try:
            bound = int(text)
        except ValueError:
            raise SelectorError(
                f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer "
                f"(got {text!r} in {term!r})"
            ) from None
        greater = match["op"] == ">"
        return lambda labels: _compare(labels.get(key), bound, greater=greater)
    if match := _EXISTS_TERM.match(term):
        key = match["key"]
        _check_key(key)
        if match["op"]:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(
        f"unable to parse requirement: {term!r} is not one of 'k', '!k', 'k=v', 'k==v', 'k!=v', "
        "'k in (v1,v2)', 'k notin (v1,v2)', 'k>N', 'k<N'"
    )


def _compare(actual: str | None, bound: int, *, greater: bool) -> bool:
    if actual is None:
        return False
    try:
        number = int(actual)
    except ValueError:
        return False
    return number > bound if greater else number < bound


def _check_key(key: str) -> None:
    if error := label_key_error(key):
        raise SelectorError(f"unable to parse requirement: key: Invalid value: {key!r}: {error}")


def _check_value(value: str) -> None:
    if error := label_value_error(value):
        raise SelectorError(f"unable to parse requirement: values[0]: Invalid value: {value!r}: {error}")


def _pod_ips(pod: dict[str, Any]) -> str:
    return ",".join(entry.get("ip", "") for entry in pod.get("status", {}).get("podIPs") or [])


# The fields the real API server can select on, per resource (pkg/registry/core/*/strategy.go).
_COMMON_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda obj: obj["metadata"].get("name", ""),
    "metadata.namespace": lambda obj: obj["metadata"].get("namespace", ""),
}
_POD_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    **_COMMON_FIELDS,
    "spec.nodeName": lambda pod: pod["spec"].get("nodeName", ""),
    "spec.host": lambda pod: pod["spec"].get("nodeName", ""),  # legacy alias of spec.nodeName
    "spec.restartPolicy": lambda pod: pod["spec"].get("restartPolicy", ""),
    "spec.schedulerName": lambda pod: pod["spec"].get("schedulerName", ""),
    "spec.serviceAccountName": lambda pod: pod["spec"].get("serviceAccountName", ""),
    "spec.hostNetwork": lambda pod: "true" if pod["spec"].get("hostNetwork") else "false",
    "status.phase": lambda pod: pod.get("status", {}).get("phase", ""),
    "status.podIP": lambda pod: pod.get("status", {}).get("podIP", ""),
    "status.podIPs": _pod_ips,
    "status.nominatedNodeName": lambda pod: pod.get("status", {}).get("nominatedNodeName", ""),
}
SELECTABLE_FIELDS: dict[str, dict[str, Callable[[dict[str, Any]], str]]] = {
    "pods": _POD_FIELDS,
    "secrets": {**_COMMON_FIELDS, "type": lambda secret: secret.get("type", "")},
    "configmaps": _COMMON_FIELDS,
    "namespaces": {**_COMMON_FIELDS, "status.phase": lambda ns: ns.get("status", {}).get("phase", "")},
    "nodes": {
        **_COMMON_FIELDS,
        "spec.unschedulable": lambda node: "true" if node.get("spec", {}).get("unschedulable") else "false",
    },
}

_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_FIELD_TERM = re.compile(r"^(?P<field>[^=!]+?)\s*(?P<op>==|!=|=)(?P<value>.*)$")


def parse_field_selector(resource: str, selector: str) -> Matcher:
    """Compile a field selector (``status.phase=Running,spec.nodeName!=``) for objects of ``resource``."""
    fields = SELECTABLE_FIELDS[resource]
    terms: list[tuple[Callable[[dict[str, Any]], str], bool, str]] = []
    for raw in _UNESCAPED_COMMA.split(selector) if selector.strip() else []:
        match = _FIELD_TERM.match(raw.strip())
        if match is None:
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{raw}'")
        name = match["field"].strip()
        if name not in fields:
            raise SelectorError(f"field label not supported: {name}")
        value = re.sub(r"\\(.)", r"\1", match["value"])
        terms.append((fields[name], match["op"] == "!=", value))
    return lambda obj: all((extract(obj) != value) == negate for extract, negate, value in terms)


def compile_filter(resource: str, label_selector: str | None, field_selector: str | None) -> Matcher | None:
    """One predicate for both selectors of a list/watch request, or None when nothing is filtered."""
    labels = parse_label_selector(label_selector) if label_selector else None
    fields = parse_field_selector(resource, field_selector) if field_selector else None
    if labels is None and fields is None:
        return None
    return lambda obj: (
        (labels is None or labels(obj["metadata"].get("labels") or {})) and (fields is None or fields(obj))
    )
