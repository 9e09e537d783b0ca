"""The engine port on a real server (osmem-server), with both clients.

Every test runs once with ``opensearch-py`` and once with the ``elasticsearch``
client (see conftest). Faults and TLS go through a real front server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path

import httpx
import pytest

from jobwire.runtime.embedded import SearchServer
from jobwire.runtime.secrets import Secrets
from jobwire.search_sync.adapters.engine import EngineError, EngineUnavailable, SearchEngine, Write
from jobwire.testing.dovecot import self_signed_ca

pytestmark = pytest.mark.integration

MAPPINGS = {"properties": {"title": {"type": "text"}, "n": {"type": "long"}}}


def doc(title: str, n: int = 1) -> bytes:
    # Built by hand the way PostgreSQL's jsonb prints (spaces after ':' and ',').
    return f'{{"title": {json.dumps(title)}, "n": {n}}}'.encode()


def index_write(id: str, version: int, title: str, n: int = 1) -> Write:
    return Write("index", id, version, doc(title, n))


async def test_create_write_count_and_get(engine: SearchEngine, index: str) -> None:
    name = f"{index}-1"
    await engine.create_index(name, {"number_of_shards": 1}, MAPPINGS)
    results = await engine.bulk(
        name, [index_write("a", 1, "Café"), index_write("b", 1, "Tea"), index_write("c", 1, "Milk")]
    )
    assert [(r.id, r.outcome) for r in results] == [
        ("a", "written"),
        ("b", "written"),
        ("c", "written"),
    ]
    assert await engine.count(name) == 3
    assert await engine.get(name, "a") == {"title": "Café", "n": 1}
    assert await engine.get(name, "missing") is None


async def test_external_versions_keep_the_newest_document(engine: SearchEngine, index: str) -> None:
    name = f"{index}-1"
    await engine.create_index(name, None, MAPPINGS)
    assert (await engine.bulk(name, [index_write("a", 5, "five")]))[0].outcome == "written"

    older, equal = await engine.bulk(name, [index_write("a", 4, "four"), index_write("a", 5, "5")])
    assert (older.outcome, equal.outcome) == ("stale", "stale")
    assert older.reason is not None
    assert "version_conflict_engine_exception" in older.reason
    assert await engine.get(name, "a") == {"title": "five", "n": 1}

    assert (await engine.bulk(name, [index_write("a", 6, "six")]))[0].outcome == "written"
    assert await engine.get(name, "a") == {"title": "six", "n": 1}

    deleted, missing = await engine.bulk(
        name, [Write("delete", "a", 7, None), Write("delete", "never-there", 1, None)]
    )
    assert (deleted.outcome, missing.outcome) == ("written", "written")
    assert await engine.get(name, "a") is None
    # The delete's tombstone keeps its version: a late write of older data stays out.
    assert (await engine.bulk(name, [index_write("a", 6, "six")]))[0].outcome == "stale"
    assert await engine.get(name, "a") is None


async def test_a_mapping_conflict_rejects_only_its_item(engine: SearchEngine, index: str) -> None:
    name = f"{index}-1"
    await engine.create_index(name, None, MAPPINGS)
    bad = Write("index", "bad", 1, b'{"title": "x", "n": "not a number"}')
    results = await engine.bulk(name, [index_write("a", 1, "A"), bad, index_write("b", 1, "B")])
    assert [r.outcome for r in results] == ["written", "rejected", "written"]
    assert results[1].id == "bad"
    assert results[1].reason is not None
    assert results[1].reason.startswith("mapper_parsing_exception: failed to parse field [n]")
    assert await engine.count(name) == 2
    assert await engine.get(name, "bad") is None


async def test_swap_alias_points_it_at_exactly_the_new_index(
    engine: SearchEngine, index: str, search_engine_url: str
) -> None:
    alias = f"{index}-cases"
    first, second = f"{alias}-1", f"{alias}-2"
    for name, titles in ((first, ["old"]), (second, ["new", "newer"])):
        await engine.create_index(name, None, MAPPINGS)
        await engine.bulk(name, [index_write(t, 1, t) for t in titles])
    assert await engine.aliased(alias) == []

    assert await engine.swap_alias(alias, first) == []
    assert await engine.aliased(alias) == [first]
    assert await engine.swap_alias(alias, second) == [first]
    assert await engine.aliased(alias) == [second]

    assert await engine.count(alias) == 2
    async with httpx.AsyncClient(base_url=search_engine_url) as http:
        found = await http.post(f"/{alias}/_search", json={"query": {"match": {"title": "newer"}}})
    assert found.status_code == 200
    assert [hit["_id"] for hit in found.json()["hits"]["hits"]] == ["newer"]
    assert {hit["_index"] for hit in found.json()["hits"]["hits"]} == {second}


async def test_swap_alias_takes_it_from_every_index_it_had(
    engine: SearchEngine, index: str, search_engine_url: str
) -> None:
    alias = f"{index}-cases"
    names = [f"{alias}-{n}" for n in (1, 2, 3)]
    for name in names:
        await engine.create_index(name, None, None)
    # A state a crash between two tools could leave: the alias on two indices.
    async with httpx.AsyncClient(base_url=search_engine_url) as http:
        actions = [{"add": {"index": name, "alias": alias}} for name in names[:2]]
        assert (await http.post("/_aliases", json={"actions": actions})).status_code == 200
    assert await engine.aliased(alias) == names[:2]
    assert await engine.swap_alias(alias, names[2]) == names[:2]
    assert await engine.aliased(alias) == [names[2]]


async def test_indices_by_prefix_and_deleting_them(engine: SearchEngine, index: str) -> None:
    for name in (f"{index}-cases-2", f"{index}-cases-1", f"{index}-other"):
        await engine.create_index(name, None, None)
    await engine.swap_alias(f"{index}-cases", f"{index}-cases-1")
    # The alias shares the prefix; only physical indices are listed.
    assert await engine.indices(f"{index}-cases") == [f"{index}-cases-1", f"{index}-cases-2"]
    await engine.delete_index(f"{index}-cases-2")
    await engine.delete_index(f"{index}-cases-2")  # a missing index is fine
    assert await engine.indices(f"{index}-cases") == [f"{index}-cases-1"]
    with pytest.raises(ValueError, match="index prefix"):
        await engine.indices(f"{index}*")


async def test_requests_the_engine_refuses_raise_engine_error(
    engine: SearchEngine, index: str
) -> None:
    name = f"{index}-1"
    await engine.create_index(name, None, None)
    with pytest.raises(EngineError, match="resource_already_exists_exception") as raised:
        await engine.create_index(name, None, None)
    assert raised.value.status == 400
    with pytest.raises(EngineError, match="index_not_found_exception"):
        await engine.get(f"{index}-missing", "a")


async def test_engine_unavailable_once_the_retry_deadline_passes(
    kind: str, index: str, tmp_path: Path, engine_on
) -> None:  # type: ignore[no-untyped-def]
    with SearchServer(tmp_path / "osmem") as server:
        engine = engine_on(kind, server.url, retry_seconds=0.5)
        await engine.create_index(f"{index}-1", None, None)
        server.stop()
        # The bound only keeps a broken retry loop from hanging the test.
        with pytest.raises(EngineUnavailable, match=r"still failing after \d+ tries in 0.5 s"):
            await asyncio.wait_for(engine.bulk(f"{index}-1", [index_write("a", 1, "A")]), 30)
        with pytest.raises(EngineUnavailable, match="still failing"):
            await asyncio.wait_for(engine.count(f"{index}-1"), 30)


async def test_a_busy_engine_gets_the_whole_request_again(
    kind: str, index: str, front, engine_on
) -> None:  # type: ignore[no-untyped-def]
    proxy = await front()
    engine = engine_on(kind, proxy.url)
    name = f"{index}-1"
    await engine.create_index(name, None, MAPPINGS)
    proxy.faults = ["busy", "busy"]
    results = await engine.bulk(name, [index_write("a", 1, "A"), index_write("b", 1, "B")])
    assert [r.outcome for r in results] == ["written", "written"]
    bulks = proxy.bulks()
    assert len(bulks) == 3
    assert bulks[0].body == bulks[1].body == bulks[2].body
    assert await engine.count(name) == 2


async def test_items_a_busy_engine_refused_are_sent_again_alone(
    kind: str, index: str, front, engine_on
) -> None:  # type: ignore[no-untyped-def]
    proxy = await front()
    engine = engine_on(kind, proxy.url)
    name = f"{index}-1"
    await engine.create_index(name, None, MAPPINGS)
    proxy.faults = ["busy-last-item"]
    writes = [index_write("a", 1, "A"), Write("delete", "x", 1, None), index_write("c", 1, "C")]
    results = await engine.bulk(name, writes)
    assert [(r.id, r.outcome) for r in results] == [
        ("a", "written"),
        ("x", "written"),
        ("c", "written"),
    ]
    first, again = proxy.bulks()
    assert again.body == (
        b'{"index":{"_id":"c","version":1,"version_type":"external"}}\n' + doc("C") + b"\n"
    )
    assert first.body.endswith(again.body)
    assert await engine.get(name, "c") == {"title": "C", "n": 1}


def _server_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA and a TLS server context with a certificate it signed for 127.0.0.1."""
    ca, cert, key = self_signed_ca(directory)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    return ca, tls


async def test_tls_with_a_ca_from_a_secret_and_basic_auth(
    kind: str, index: str, front, engine_on, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ca, tls = _server_tls(tmp_path)
    proxy = await front(tls=tls)
    secrets = Secrets(
        None,
        {
            "JOBWIRE_SECRET_SEARCH_USER": "sync",
            "JOBWIRE_SECRET_SEARCH_PASSWORD": "s3cret:pw",
            "JOBWIRE_SECRET_SEARCH_CA": ca.read_text(),
        },
    )
    engine = engine_on(
        kind, proxy.url, secrets, username="search-user", password="search-password", ca="search-ca"
    )
    await engine.create_index(f"{index}-1", None, None)
    assert await engine.aliased(f"{index}-none") == []
    expected = "Basic " + base64.b64encode(b"sync:s3cret:pw").decode()
    assert len(proxy.seen) == 2
    assert {seen.headers.get("Authorization") for seen in proxy.seen} == {expected}


async def test_an_untrusted_certificate_is_an_error_not_an_outage(
    kind: str, front, engine_on, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, tls = _server_tls(tmp_path)
    proxy = await front(tls=tls)
    # Without the CA the certificate is not trusted; retrying would not change that.
    engine = engine_on(kind, proxy.url, retry_seconds=30)
    with pytest.raises(EngineError, match="tls_error"):
        await asyncio.wait_for(engine.aliased("cases"), 30)
    assert proxy.seen == []


async def test_an_elasticsearch_api_key(index: str, front, engine_on) -> None:  # type: ignore[no-untyped-def]
    proxy = await front()
    secrets = Secrets(None, {"JOBWIRE_SECRET_ES_KEY": "a2V5OnNlY3JldA=="})
    engine = engine_on("elasticsearch", proxy.url, secrets, api_key="es-key")
    await engine.create_index(f"{index}-1", None, None)
    assert [seen.headers.get("Authorization") for seen in proxy.seen] == ["ApiKey a2V5OnNlY3JldA=="]
