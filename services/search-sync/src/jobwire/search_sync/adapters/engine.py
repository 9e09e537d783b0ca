"""The search engine port, and its adapters for Elasticsearch 8/9 and OpenSearch 2/3.

Who does what: :class:`SearchEngine` is the port the full load and the
incremental job write through. ``_Engine`` holds everything both engines
share — the bulk body, what each bulk item's answer means, the retry loop and
the translation of a failed call into :class:`EngineError` or
:class:`EngineUnavailable` — and :class:`OpenSearchEngine` and
:class:`ElasticsearchEngine` only make the client calls and say what a client
exception is.

Versions: every write carries an external version (``version_type: external``)
taken from the source snapshot. The engine keeps a write only if its version is
higher than the one it has, deleted documents included (it keeps their
tombstones for a while), so a replayed or late write of older data is
``stale``: the newer document is already there, and that is not an error.

Retries: a call that fails because the engine is unreachable, times out,
answers 5xx or 429 (too busy) is sent again with the kit's backoff until
``retry_seconds`` have passed since the first try; then
:class:`EngineUnavailable`. A bulk request also resends, in one smaller
request, only the items the engine answered 429 or 5xx for. The clients' own
retries are off: one loop, one deadline.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import elasticsearch
import opensearchpy
from elastic_transport import ObjectApiResponse

from jobwire.contracts.search import EngineConfig
from jobwire.runtime.logs import get_logger
from jobwire.runtime.secrets import SecretNotFound, Secrets
from jobwire.runtime.waits import retry_delay

__all__ = [
    "ElasticsearchEngine",
    "EngineError",
    "EngineUnavailable",
    "OpenSearchEngine",
    "SearchEngine",
    "Write",
    "WriteResult",
    "bulk_body",
    "item_result",
    "open_engine",
]

log = get_logger("jobwire.search_sync.engine")

T = TypeVar("T")

Op = Literal["index", "delete"]
Outcome = Literal["written", "stale", "rejected"]

# Both engines take external versions from 0 to Java's Long.MAX_VALUE.
_MAX_VERSION = 2**63 - 1
_RETRY_BASE_SECONDS = 0.2
_RETRY_CAP_SECONDS = 10.0
# `type` of a failure below the HTTP level; a TLS failure is a setting to fix, not an outage.
_CONNECTION = "connection_error"
_TLS = "tls_error"


@dataclass(frozen=True, slots=True)
class Write:
    """One item of a bulk request: index a document, or delete one, at an external version."""

    op: Op
    id: str
    version: int
    # The document's JSON text as PostgreSQL built it: spliced into the request as it is.
    source: bytes | None

    def __post_init__(self) -> None:
        if self.op not in ("index", "delete"):
            raise ValueError(f"write {self.id!r}: op {self.op!r} is not 'index' or 'delete'")
        if (self.op == "index") != (self.source is not None):
            raise ValueError(f"write {self.id!r}: 'index' needs a source, 'delete' takes none")
        if not 0 <= self.version <= _MAX_VERSION:
            raise ValueError(f"write {self.id!r}: version {self.version} is not in 0..2^63-1")
        if self.source is not None and b"\n" in self.source:
            # A raw newline would end the NDJSON line mid-document; jsonb's text has none.
            raise ValueError(f"write {self.id!r}: the source holds a line break")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What the engine did with one write.

    ``written``: stored (a delete of a document that is not there counts);
    ``stale``: the engine has this or a newer version, nothing changed;
    ``rejected``: refused (a mapping conflict, a bad document), ``reason`` says why.
    """

    id: str
    op: str
    outcome: Outcome
    reason: str | None


class EngineUnavailable(Exception):
    """The engine could not be reached, or stayed busy or failing, for ``retry_seconds``."""


class EngineError(Exception):
    """The engine refused a request (a 4xx other than 429): a setting or a bug, not an outage."""

    def __init__(self, what: str, status: int | None, kind: str | None, reason: str) -> None:
        answer = f"{status} {kind}" if kind else f"{status}"
        super().__init__(f"{what}: the engine answered {answer}: {reason}")
        self.status = status
        self.kind = kind
        self.reason = reason


class SearchEngine(Protocol):
    """An index behind an alias, written in bulk at external versions."""

    async def create_index(
        self, name: str, settings: dict[str, Any] | None, mappings: dict[str, Any] | None
    ) -> None: ...

    async def delete_index(self, name: str) -> None:
        """Delete index ``name``; nothing if there is none."""

    async def indices(self, prefix: str) -> list[str]:
        """The physical indices whose names start with ``prefix``, sorted."""
        ...

    async def aliased(self, alias: str) -> list[str]:
        """The indices ``alias`` points to, sorted; [] if there is no such alias."""
        ...

    async def swap_alias(self, alias: str, index: str) -> list[str]:
        """Point ``alias`` at ``index`` only, in one request (searches never see a gap);
        returns the indices it was taken from."""
        ...

    async def bulk(self, index: str, writes: Sequence[Write]) -> list[WriteResult]:
        """Send ``writes`` in one request; one result per write, in their order.
        :class:`EngineUnavailable` if items are still unwritten after the retry deadline."""
        ...

    async def count(self, index: str) -> int:
        """The number of documents in ``index`` (or an alias), after a refresh."""
        ...

    async def refresh(self, index: str) -> None: ...

    async def get(self, index: str, id: str) -> dict[str, Any] | None:
        """The ``_source`` of document ``id``; None if there is none."""
        ...

    async def close(self) -> None: ...


# ------------------------------------------------------------ pure helpers


def bulk_body(writes: Sequence[Write]) -> bytes:
    """The NDJSON body of a bulk request: an action line per write, then its source as given."""
    lines: list[bytes] = []
    for write in writes:
        action = {write.op: {"_id": write.id, "version": write.version, "version_type": "external"}}
        lines.append(json.dumps(action, separators=(",", ":")).encode())
        if write.source is not None:
            lines.append(write.source)
    lines.append(b"")  # the body must end with a line break
    return b"\n".join(lines)


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


def describe(error: object) -> str:
    """An engine's error object as one line: ``type: reason (caused by type: reason)``."""
    if not isinstance(error, Mapping):
        return str(error)
    text = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    return f"{text} (caused by {describe(cause)})" if cause else text


def item_result(write: Write, item: Mapping[str, Any]) -> WriteResult | None:
    """What one bulk item's answer means for ``write``; None if it is to be sent again."""
    answer = next(iter(item.values()))
    status = int(answer.get("status", 0))
    error = answer.get("error")
    # A delete of a missing document is done; a missing *index* (an error) is not.
    if 200 <= status < 300 or (write.op == "delete" and status == 404 and error is None):
        return WriteResult(write.id, write.op, "written", None)
    if status == 409:
        return WriteResult(write.id, write.op, "stale", describe(error))
    if _transient(status):
        return None
    return WriteResult(write.id, write.op, "rejected", describe(error) if error else str(status))


@dataclass(frozen=True, slots=True)
class _Failure:
    """A failed client call: HTTP ``status`` (None below HTTP), the error's ``type``, why."""

    status: int | None
    kind: str | None
    reason: str

    @property
    def transient(self) -> bool:
        if self.status is None:
            return self.kind != _TLS
        return _transient(self.status)

    @classmethod
    def answer(cls, status: int, body: object) -> _Failure:
        """From an HTTP error answer; ``kind`` is None when the body holds no error (a 404 get)."""
        error = body.get("error") if isinstance(body, Mapping) else body
        if isinstance(error, Mapping):
            return cls(status, str(error.get("type")), describe(error))
        return cls(status, None, str(error) if error else f"HTTP {status}")

    def __str__(self) -> str:
        return f"{self.status or self.kind}: {self.reason}"


class _Retries:
    """The retries of one call: the kit's backoff, until ``seconds`` after the first try."""

    def __init__(self, what: str, seconds: float) -> None:
        self.what = what
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._tries = 0

    async def wait(self, failure: _Failure) -> bool:
        """Wait before the next try; False once the deadline has passed."""
        self._tries += 1
        left = self._deadline - time.monotonic()
        if left <= 0:
            return False
        delay = min(retry_delay(_RETRY_BASE_SECONDS, self._tries, _RETRY_CAP_SECONDS), left)
        log.warning(
            "search engine call failed, retrying",
            call=self.what,
            failure=str(failure),
            tries=self._tries,
            delay_seconds=round(delay, 3),
        )
        await asyncio.sleep(delay)
        return True

    def gave_up(self, failure: _Failure) -> EngineUnavailable:
        return EngineUnavailable(
            f"{self.what}: {failure}; still failing after {self._tries} tries "
            f"in {self._seconds:g} s"
        )


# ---------------------------------------------------------------- adapters


class _Engine:
    """What both engines share; subclasses make the client calls (``_``-methods)."""

    def __init__(self, retry_seconds: float) -> None:
        if retry_seconds < 0:
            raise ValueError(f"retry_seconds must be >= 0, not {retry_seconds}")
        self._retry_seconds = retry_seconds

    # -- the port

    async def create_index(
        self, name: str, settings: dict[str, Any] | None, mappings: dict[str, Any] | None
    ) -> None:
        await self._call(
            f"create index {name}", lambda: self._create_index(name, settings, mappings)
        )

    async def delete_index(self, name: str) -> None:
        try:
            await self._call(f"delete index {name}", lambda: self._delete_index(name))
        except EngineError as exc:
            if exc.status != 404:
                raise

    async def indices(self, prefix: str) -> list[str]:
        if not prefix or any(c in prefix for c in "*?,"):
            raise ValueError(f"index prefix {prefix!r} must be non-empty, without '*', '?' or ','")
        found = await self._call(f"list indices {prefix}*", lambda: self._indices(prefix + "*"))
        return sorted(name for name in found if name.startswith(prefix))

    async def aliased(self, alias: str) -> list[str]:
        try:
            found = await self._call(f"get alias {alias}", lambda: self._aliases(alias))
        except EngineError as exc:
            if exc.status == 404:
                return []
            raise
        return sorted(found)

    async def swap_alias(self, alias: str, index: str) -> list[str]:
        old = [name for name in await self.aliased(alias) if name != index]
        actions: list[dict[str, Any]] = [
            {"remove": {"index": name, "alias": alias}} for name in old
        ]
        actions.append({"add": {"index": index, "alias": alias}})
        await self._call(f"move alias {alias} to {index}", lambda: self._update_aliases(actions))
        return old

    async def bulk(self, index: str, writes: Sequence[Write]) -> list[WriteResult]:
        retries = _Retries(f"bulk of {len(writes)} writes to {index}", self._retry_seconds)
        results: dict[int, WriteResult] = {}
        pending = list(enumerate(writes))
        while pending:
            body = bulk_body([write for _, write in pending])
            answer = await self._call(retries.what, partial(self._bulk, index, body), retries)
            items = answer.get("items", [])
            if len(items) != len(pending):
                raise EngineError(
                    retries.what, None, None, f"{len(items)} items answered for {len(pending)}"
                )
            again: list[tuple[int, Write]] = []
            for (position, write), item in zip(pending, items, strict=True):
                result = item_result(write, item)
                if result is None:
                    again.append((position, write))
                else:
                    results[position] = result
            if again:
                failure = _Failure(None, "bulk_items", f"{len(again)} items busy or failing")
                if not await retries.wait(failure):
                    raise retries.gave_up(failure)
            pending = again
        return [results[position] for position in range(len(writes))]

    async def count(self, index: str) -> int:
        await self.refresh(index)
        answer = await self._call(f"count {index}", lambda: self._count(index))
        return int(answer["count"])

    async def refresh(self, index: str) -> None:
        await self._call(f"refresh {index}", lambda: self._refresh(index))

    async def get(self, index: str, id: str) -> dict[str, Any] | None:
        try:
            answer = await self._call(f"get {id} from {index}", lambda: self._get(index, id))
        except EngineError as exc:
            # A missing document answers 404 without an error; a missing index with one.
            if exc.status == 404 and exc.kind is None:
                return None
            raise
        return dict(answer["_source"])

    async def close(self) -> None:
        raise NotImplementedError

    # -- the retry loop

    async def _call(
        self, what: str, call: Callable[[], Awaitable[T]], retries: _Retries | None = None
    ) -> T:
        retries = retries or _Retries(what, self._retry_seconds)
        while True:
            try:
                return await call()
            except Exception as exc:
                failure = self._failure(exc)
                if failure is None:
                    raise
                if not failure.transient:
                    raise EngineError(what, failure.status, failure.kind, failure.reason) from exc
                if not await retries.wait(failure):
                    raise retries.gave_up(failure) from exc

    # -- per engine

    def _failure(self, exc: Exception) -> _Failure | None:
        """``exc`` as a failure of the engine; None if it is not one (a bug: re-raised)."""
        raise NotImplementedError

    async def _create_index(
        self, name: str, settings: dict[str, Any] | None, mappings: dict[str, Any] | None
    ) -> None:
        raise NotImplementedError

    async def _delete_index(self, name: str) -> None:
        raise NotImplementedError

    async def _indices(self, pattern: str) -> Mapping[str, Any]:
        raise NotImplementedError

    async def _aliases(self, alias: str) -> Mapping[str, Any]:
        raise NotImplementedError

    async def _update_aliases(self, actions: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def _bulk(self, index: str, body: bytes) -> Mapping[str, Any]:
        raise NotImplementedError

    async def _count(self, index: str) -> Mapping[str, Any]:
        raise NotImplementedError

    async def _refresh(self, index: str) -> None:
        raise NotImplementedError

    async def _get(self, index: str, id: str) -> Mapping[str, Any]:
        raise NotImplementedError


def _body(response: ObjectApiResponse[Any]) -> Mapping[str, Any]:
    body: Mapping[str, Any] = response.body
    return body


class ElasticsearchEngine(_Engine):
    """Elasticsearch 8/9 through the official async client."""

    def __init__(self, client: elasticsearch.AsyncElasticsearch, retry_seconds: float) -> None:
        super().__init__(retry_seconds)
        self._client = client

    async def close(self) -> None:
        await self._client.close()

    def _failure(self, exc: Exception) -> _Failure | None:
        if isinstance(exc, elasticsearch.ApiError):
            return _Failure.answer(exc.meta.status, exc.body)
        if isinstance(exc, elasticsearch.SSLError):
            return _Failure(None, _TLS, str(exc))
        if isinstance(exc, elasticsearch.ConnectionError | elasticsearch.ConnectionTimeout):
            return _Failure(None, _CONNECTION, str(exc))
        return None

    async def _create_index(
        self, name: str, settings: dict[str, Any] | None, mappings: dict[str, Any] | None
    ) -> None:
        await self._client.indices.create(index=name, settings=settings, mappings=mappings)

    async def _delete_index(self, name: str) -> None:
        await self._client.indices.delete(index=name)

    async def _indices(self, pattern: str) -> Mapping[str, Any]:
        return _body(await self._client.indices.get(index=pattern))

    async def _aliases(self, alias: str) -> Mapping[str, Any]:
        return _body(await self._client.indices.get_alias(name=alias))

    async def _update_aliases(self, actions: list[dict[str, Any]]) -> None:
        await self._client.indices.update_aliases(actions=actions)

    async def _bulk(self, index: str, body: bytes) -> Mapping[str, Any]:
        # The NDJSON serializer sends bytes as they are (the stubs know only dicts).
        return _body(await self._client.bulk(index=index, operations=body))  # type: ignore[arg-type]

    async def _count(self, index: str) -> Mapping[str, Any]:
        return _body(await self._client.count(index=index))

    async def _refresh(self, index: str) -> None:
        await self._client.indices.refresh(index=index)

    async def _get(self, index: str, id: str) -> Mapping[str, Any]:
        return _body(await self._client.get(index=index, id=id))


def _caused_by_tls(error: object) -> bool:
    while isinstance(error, BaseException):
        if isinstance(error, ssl.SSLError):
            return True
        error = error.__cause__
    return False


class OpenSearchEngine(_Engine):
    """OpenSearch 2/3 through ``opensearch-py``'s async client."""

    def __init__(self, client: opensearchpy.AsyncOpenSearch, retry_seconds: float) -> None:
        super().__init__(retry_seconds)
        self._client = client

    async def close(self) -> None:
        await self._client.close()

    def _failure(self, exc: Exception) -> _Failure | None:
        if isinstance(exc, opensearchpy.ConnectionError):  # timeouts included
            # A refused certificate comes as a plain ConnectionError holding aiohttp's error.
            tls = isinstance(exc, opensearchpy.SSLError) or _caused_by_tls(exc.info)
            return _Failure(None, _TLS if tls else _CONNECTION, str(exc))
        if isinstance(exc, opensearchpy.TransportError) and isinstance(exc.status_code, int):
            return _Failure.answer(exc.status_code, exc.info)
        return None

    async def _create_index(
        self, name: str, settings: dict[str, Any] | None, mappings: dict[str, Any] | None
    ) -> None:
        body = {"settings": settings, "mappings": mappings}
        await self._client.indices.create(
            index=name, body={key: value for key, value in body.items() if value is not None}
        )

    async def _delete_index(self, name: str) -> None:
        await self._client.indices.delete(index=name)

    async def _indices(self, pattern: str) -> Mapping[str, Any]:
        found: Mapping[str, Any] = await self._client.indices.get(index=pattern)
        return found

    async def _aliases(self, alias: str) -> Mapping[str, Any]:
        found: Mapping[str, Any] = await self._client.indices.get_alias(name=alias)
        return found

    async def _update_aliases(self, actions: list[dict[str, Any]]) -> None:
        await self._client.indices.update_aliases(body={"actions": actions})

    async def _bulk(self, index: str, body: bytes) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = await self._client.bulk(index=index, body=body)
        return answer

    async def _count(self, index: str) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = await self._client.count(index=index)
        return answer

    async def _refresh(self, index: str) -> None:
        await self._client.indices.refresh(index=index)

    async def _get(self, index: str, id: str) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = await self._client.get(index=index, id=id)
        return answer


# ------------------------------------------------------------------ wiring


def _tls_context(config: EngineConfig, ca: str | None) -> ssl.SSLContext | None:
    """The TLS context the config asks for; None for the client's default (system CAs)."""
    if ca is None and config.verify_certs:
        return None
    if not all(url.startswith("https://") for url in config.urls):
        if ca is None and not any(url.startswith("https://") for url in config.urls):
            return None  # `verify_certs: false` with plain HTTP: nothing to verify
        raise ValueError(
            "engine `ca` and `verify_certs: false` need every URL to be https://, "
            f"not {', '.join(config.urls)}"
        )
    context = ssl.create_default_context(cadata=ca)
    if not config.verify_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _secret(secrets: Secrets, field: str, name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return secrets.resolve(name).get_secret_value()
    except SecretNotFound as exc:
        exc.add_note(f"named by the engine's `{field}`")
        raise


def open_engine(
    config: EngineConfig,
    secrets: Secrets,
    *,
    node_class: type | None = None,
    retry_seconds: float = 60.0,
) -> SearchEngine:
    """The engine ``config`` names, logged in with its secrets.

    ``node_class``: the client's HTTP node (Elasticsearch) or connection
    (OpenSearch) class, for tests; None = the client's aiohttp one.
    :class:`~jobwire.runtime.secrets.SecretNotFound` names a missing secret.
    """
    if config.kind == "opensearch" and config.api_key is not None:
        raise ValueError(
            "engine `api_key` is for Elasticsearch; OpenSearch logs in with `username`/`password`"
        )
    username = _secret(secrets, "username", config.username)
    password = _secret(secrets, "password", config.password)
    api_key = _secret(secrets, "api_key", config.api_key)
    tls = _tls_context(config, _secret(secrets, "ca", config.ca))
    options: dict[str, Any] = {"max_retries": 0, "retry_on_status": ()}
    if tls is not None:
        options["ssl_context"] = tls
    basic = (username, password) if username is not None and password is not None else None
    if config.kind == "elasticsearch":
        if node_class is not None:
            options["node_class"] = node_class
        client = elasticsearch.AsyncElasticsearch(
            list(config.urls),
            basic_auth=basic,
            api_key=api_key,
            request_timeout=config.request_timeout_seconds,
            retry_on_timeout=False,
            **options,
        )
        return ElasticsearchEngine(client, retry_seconds)
    if node_class is not None:
        options["connection_class"] = node_class
    return OpenSearchEngine(
        opensearchpy.AsyncOpenSearch(
            list(config.urls),
            http_auth=basic,
            timeout=config.request_timeout_seconds,
            **options,
        ),
        retry_seconds,
    )
