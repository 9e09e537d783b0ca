"""The search engine fixture, SearchServer, and the Elasticsearch client's compat node."""

from __future__ import annotations

import uuid
from pathlib import Path

import elasticsearch
import pytest

from jobwire.runtime.embedded import is_listening, pid_alive
from jobwire.testing.search_engine import ElasticsearchCompatNode, SearchServer, engine_answers

pytestmark = pytest.mark.integration


def test_search_engine_url_answers(search_engine_url: str) -> None:
    assert engine_answers(search_engine_url)


def test_a_search_server_stops_by_pid_and_comes_back_on_its_port(tmp_path: Path) -> None:
    server = SearchServer(tmp_path)
    server.start()
    try:
        pid = server.pid
        assert pid is not None
        assert engine_answers(server.url)
        server.stop()
        assert not pid_alive(pid)
        assert not is_listening("127.0.0.1", server.port)
        server.start()
        assert engine_answers(server.url)
    finally:
        server.stop()
    assert (tmp_path / "osmem-server.log").read_text().startswith('{"url":')


async def test_the_elasticsearch_client_works_through_the_compat_node(
    search_engine_url: str,
) -> None:
    index = f"compat-{uuid.uuid4().hex[:12]}"
    client = elasticsearch.AsyncElasticsearch(search_engine_url, node_class=ElasticsearchCompatNode)
    try:
        await client.bulk(
            index=index,
            operations=[{"index": {"_id": "1"}}, {"title": "hello"}],
            refresh=True,
        )
        found = await client.search(index=index, query={"match": {"title": "hello"}})
        assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
    finally:
        await client.indices.delete(index=index)
        await client.close()


async def test_without_the_compat_node_osmem_refuses_the_clients_media_types(
    search_engine_url: str,
) -> None:
    # Why the node exists (a request with a body is refused): if this fails, the node can go.
    client = elasticsearch.AsyncElasticsearch(search_engine_url)
    try:
        with pytest.raises(elasticsearch.ApiError) as raised:
            await client.count(index="anything", query={"match_all": {}})
        assert raised.value.meta.status == 406
    finally:
        await client.close()
