"""The bulk body and what each bulk item's answer means, on canned answers (no network)."""

from __future__ import annotations

import json

import pytest

from jobwire.contracts.search import EngineConfig
from jobwire.runtime.secrets import SecretNotFound, Secrets
from jobwire.search_sync.adapters.engine import (
    Write,
    WriteResult,
    bulk_body,
    item_result,
    open_engine,
)

CONFLICT = {
    "type": "version_conflict_engine_exception",
    "reason": "[a]: version conflict, current version [5] is higher or equal to the one provided",
}
MAPPING = {
    "type": "mapper_parsing_exception",
    "reason": "failed to parse field [n] of type [long]",
    "caused_by": {"type": "illegal_argument_exception", "reason": 'For input string: "x"'},
}


def test_the_body_is_action_lines_with_each_source_spliced_in_as_given() -> None:
    # Key order, spacing and escapes as PostgreSQL wrote them: never parsed, never re-encoded.
    source = '{"title": "Café \\u00e9", "n": 1.50, "z": null}'.encode()
    body = bulk_body([Write("index", "a/1", 3, source), Write("delete", 'b"2', 4, None)])
    assert body.endswith(b"\n")
    lines = body.split(b"\n")
    assert lines == [
        b'{"index":{"_id":"a/1","version":3,"version_type":"external"}}',
        source,
        b'{"delete":{"_id":"b\\"2","version":4,"version_type":"external"}}',
        b"",
    ]
    assert json.loads(lines[2])["delete"]["_id"] == 'b"2'


def test_an_empty_list_makes_an_empty_body() -> None:
    assert bulk_body([]) == b""


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda: Write("index", "a", 1, None), "'index' needs a source"),
        (lambda: Write("delete", "a", 1, b"{}"), "'delete' takes none"),
        (lambda: Write("index", "a", -1, b"{}"), "version -1"),
        (lambda: Write("index", "a", 2**63, b"{}"), "version 9223372036854775808"),
        (lambda: Write("index", "a", 1, b'{"a":\n1}'), "line break"),
        (lambda: Write("upsert", "a", 1, b"{}"), "op 'upsert'"),  # type: ignore[arg-type]
    ],
)
def test_a_write_that_cannot_be_sent_is_refused_naming_it(write, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message) as raised:
        write()
    assert "write 'a'" in str(raised.value)


INDEX = Write("index", "a", 5, b"{}")
DELETE = Write("delete", "a", 5, None)


@pytest.mark.parametrize(
    ("write", "item", "expected"),
    [
        (INDEX, {"index": {"_id": "a", "status": 201, "result": "created"}}, "written"),
        (INDEX, {"index": {"_id": "a", "status": 200, "result": "updated"}}, "written"),
        (DELETE, {"delete": {"_id": "a", "status": 200, "result": "deleted"}}, "written"),
        (DELETE, {"delete": {"_id": "a", "status": 404, "result": "not_found"}}, "written"),
        (INDEX, {"index": {"_id": "a", "status": 409, "error": CONFLICT}}, "stale"),
        (DELETE, {"delete": {"_id": "a", "status": 409, "error": CONFLICT}}, "stale"),
        (INDEX, {"index": {"_id": "a", "status": 400, "error": MAPPING}}, "rejected"),
        (
            DELETE,
            {"delete": {"_id": "a", "status": 404, "error": {"type": "index_not_found_exception"}}},
            "rejected",
        ),
    ],
)
def test_each_item_answer_is_classified(write: Write, item: dict, expected: str) -> None:  # type: ignore[type-arg]
    result = item_result(write, item)
    assert result is not None
    assert (result.id, result.op, result.outcome) == ("a", write.op, expected)
    assert (result.reason is None) == (expected == "written")


def test_a_rejection_carries_the_engines_reason_and_its_cause() -> None:
    result = item_result(INDEX, {"index": {"_id": "a", "status": 400, "error": MAPPING}})
    assert result == WriteResult(
        "a",
        "index",
        "rejected",
        "mapper_parsing_exception: failed to parse field [n] of type [long] "
        '(caused by illegal_argument_exception: For input string: "x")',
    )


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_or_failing_item_is_to_be_sent_again(status: int) -> None:
    item = {"index": {"_id": "a", "status": status, "error": {"type": "x", "reason": "y"}}}
    assert item_result(INDEX, item) is None


def _config(**fields: object) -> EngineConfig:
    return EngineConfig.model_validate(
        {"kind": "elasticsearch", "urls": ["https://es:9200"]} | fields
    )


def test_a_missing_secret_is_named() -> None:
    config = _config(username="es-user", password="es-password")
    secrets = Secrets(None, {"JOBWIRE_SECRET_ES_USER": "u"})
    with pytest.raises(SecretNotFound, match="'es-password'") as raised:
        open_engine(config, secrets)
    assert raised.value.__notes__ == ["named by the engine's `password`"]


def test_tls_options_on_plain_http_urls_are_refused() -> None:
    config = _config(urls=["http://es:9200"], ca="es-ca")
    secrets = Secrets(None, {"JOBWIRE_SECRET_ES_CA": "-----BEGIN CERTIFICATE-----"})
    with pytest.raises(ValueError, match="need every URL to be https://"):
        open_engine(config, secrets)


def test_an_api_key_for_opensearch_is_refused() -> None:
    config = _config(kind="opensearch", api_key="os-key")
    with pytest.raises(ValueError, match="`api_key` is for Elasticsearch"):
        open_engine(config, Secrets(None, {"JOBWIRE_SECRET_OS_KEY": "k"}))
