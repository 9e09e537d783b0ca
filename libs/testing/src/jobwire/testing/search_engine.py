"""pytest fixtures: a search engine speaking the OpenSearch REST API.

``search_engine_url`` (session)
    The URL of an engine shared by the session: ``JOBWIRE_TEST_SEARCH_URL``
    when it answers (and ``JOBWIRE_TEST_START_SERVERS`` is not set), else a
    :class:`~jobwire.runtime.embedded.SearchServer` (osmem-server, in memory)
    started here and stopped by PID at the end. Tests isolate themselves by
    index names of their own.

No real OpenSearch or Elasticsearch can be installed here, so both clients are
tested against osmem-server. ``opensearch-py`` talks to it unchanged; the
official ``elasticsearch`` client (8/9) asks for its versioned media types,
which osmem-server answers with 406: give that client
``node_class=ElasticsearchCompatNode``. Test-only: a real Elasticsearch needs
no such node.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from elastic_transport import AiohttpHttpNode, HttpHeaders
from elastic_transport._node import NodeApiResponse
from elastic_transport.client_utils import DEFAULT, DefaultType

from jobwire.runtime.embedded import SearchServer
from jobwire.testing.plugin import HarnessSettings, _record

__all__ = ["SEARCH_URL_VARIABLE", "ElasticsearchCompatNode", "SearchServer", "engine_answers"]

SEARCH_URL_VARIABLE = "JOBWIRE_TEST_SEARCH_URL"

# `application/vnd.elasticsearch+json; compatible-with=9` → `application/json`,
# and the same for `+x-ndjson`.
_VERSIONED_MEDIA_TYPE = re.compile(
    r"application/vnd\.elasticsearch\+([\w.-]+)\s*;\s*compatible-with=\d+", re.IGNORECASE
)


class ElasticsearchCompatNode(AiohttpHttpNode):
    """The async ``elasticsearch`` client's HTTP node, sending plain media types.

    The client's versioned ``Accept`` and ``Content-Type`` are rewritten to
    ``application/json`` / ``application/x-ndjson``; the body is sent as it is.
    """

    async def perform_request(  # type: ignore[override]
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: HttpHeaders | None = None,
        request_timeout: DefaultType | float | None = DEFAULT,
    ) -> NodeApiResponse:
        if headers is not None:
            headers = headers.copy()
            for name in ("accept", "content-type"):
                value = headers.get(name)
                if value:
                    headers[name] = _VERSIONED_MEDIA_TYPE.sub(r"application/\1", value)
        return await super().perform_request(method, target, body, headers, request_timeout)


def engine_answers(url: str, timeout: float = 2.0) -> bool:
    """True if an engine at ``url`` answers its root endpoint with 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the tester's URL)
            status: int = response.status
            return status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def search_engine_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    jobwire_harness_settings: HarnessSettings,
) -> Iterator[str]:
    """URL of an engine speaking the OpenSearch REST API (reused or started for the session)."""
    configured = os.environ.get(SEARCH_URL_VARIABLE, "").rstrip("/")
    if configured and not jobwire_harness_settings.start_servers and engine_answers(configured):
        _record(request.config, f"Search engine: reused {configured}")
        yield configured
        return
    with SearchServer(tmp_path_factory.mktemp("osmem-server")) as server:
        _record(
            request.config,
            f"Search engine: started osmem-server at {server.url} (pid {server.pid})",
        )
        yield server.url
