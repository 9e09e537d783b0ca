"""The admin API (``/api/v1``) as the CLI calls it: httpx, a bearer token, and
refusals turned into one line that names what to fix.

Every method returns the API's JSON as plain data; the CLI does not share the
server's models, so it keeps working against a server a version apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from jobwire.cli.config import shown_url

# Pages are fetched at the API's largest page size.
PAGE_SIZE = 500
JSON = dict[str, Any]
_SCHEDULER_URL_HINT = "Set JOBWIRE_API_URL or --api-url"


class CliError(Exception):
    """A failure shown as one line on stderr; the command exits with ``exit_code``."""

    exit_code = 1


class ApiError(CliError):
    """The API refused a request (an RFC 7807 problem document, or a bare status)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        errors: Sequence[tuple[str, str]] = (),
        kind: str | None = None,
        hint: str | None = None,
        called: str | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.kind = kind
        self.hint = hint
        self.called = called  # "GET http://…/api/v1/jobs": which server said so
        super().__init__(self.message)

    @property
    def reason(self) -> str:
        """What was wrong: each field and its problem, else the detail."""
        if self.errors:
            return "; ".join(f"{field}: {message}" for field, message in self.errors)
        return self.detail or ""

    @property
    def message(self) -> str:
        line = f"{self.title} ({self.status})"
        if self.reason:
            line += f": {self.reason}"
        if self.hint:
            line += f" — {self.hint}"
        if self.called:
            line += f" [{self.called}]"
        return line

    @classmethod
    def from_response(
        cls,
        response: httpx.Response,
        hint: str | None = None,
        called: str | None = None,
        foreign: str = f"the scheduler's URL? {_SCHEDULER_URL_HINT}",
    ) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "title" not in body:
            # Not one of ours: a proxy's error page, or another service on
            # that port. Its text is not shown; where it came from is.
            return cls(
                response.status_code,
                response.reason_phrase or "HTTP error",
                hint=hint or f"not an answer of the jobwire API: is this {foreign}",
                called=called,
            )
        errors = [
            (str(e.get("field", "")), str(e.get("message", "")))
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        return cls(
            response.status_code,
            str(body.get("title")),
            body.get("detail"),
            errors,
            kind=body.get("type"),
            hint=hint,
            called=called,
        )


class ApiUnreachable(CliError):
    pass


def job_path(name: str, action: str = "") -> str:
    path = f"/api/v1/jobs/{quote(name, safe='')}"
    return f"{path}/{action}" if action else path


class ApiClient:
    """A session with the API at ``base_url``, authenticated by ``token``.

    ``transport`` lets a test talk to an app in-process; the CLI uses the network.
    """

    # How errors name this API and say where to point the CLI instead.
    what = "the jobwire API"
    where_hint = "is the scheduler running (`make run` in the project)? " + _SCHEDULER_URL_HINT
    foreign_hint = f"the scheduler's URL? {_SCHEDULER_URL_HINT}"

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        token_source: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "jobwire-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url
        self.token_source = token_source
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport -----------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request; raise :class:`ApiError` for any status from 400 up."""
        query = {k: v for k, v in (params or {}).items() if v is not None and v != []}
        where = shown_url(self.base_url)
        try:
            response = self._http.request(
                method, path, params=query, json=json, headers=dict(headers or {})
            )
        except httpx.ConnectError as exc:
            raise ApiUnreachable(
                f"cannot reach {self.what} at {where} ({_reason(exc)}); {self.where_hint}"
            ) from None
        except httpx.TimeoutException:
            raise ApiUnreachable(f"{self.what} at {where} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"talking to {self.what} at {where}: {_reason(exc)}") from None
        if response.status_code >= 400:
            hint = None
            if response.status_code == 401 and self.token_source:
                hint = f"the token is from {self.token_source}"
            raise ApiError.from_response(
                response, hint, f"{method} {where}{path}", self.foreign_hint
            )
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._json(self.request(method, path, **kwargs))

    def _json(self, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiUnreachable(
                f"{shown_url(self.base_url)} did not answer with JSON: is that {self.what}?"
            ) from None

    def pages(self, path: str, params: Mapping[str, Any], limit: int | None) -> Iterator[JSON]:
        """Items of a paged list, page after page, at most ``limit`` (None: all)."""
        offset = 0
        while limit is None or offset < limit:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - offset)
            page = self.call("GET", path, params={**params, "limit": size, "offset": offset})
            items = page["items"]
            yield from items
            offset += len(items)
            if len(items) < size:
                return

    # -- jobs ------------------------------------------------------------------------

    def list_jobs(self, limit: int = 100, offset: int = 0, **filters: Any) -> JSON:
        page: JSON = self.call(
            "GET", "/api/v1/jobs", params={**filters, "limit": limit, "offset": offset}
        )
        return page

    def all_jobs(self, limit: int | None = None, **filters: Any) -> list[JSON]:
        return list(self.pages("/api/v1/jobs", filters, limit))

    def get_job(self, name: str) -> JSON:
        job: JSON = self.call("GET", job_path(name))
        return job

    def create_job(self, definition: Mapping[str, Any]) -> JSON:
        job: JSON = self.call("POST", "/api/v1/jobs", json=dict(definition))
        return job

    def update_job(self, name: str, definition: Mapping[str, Any], version: int) -> JSON:
        job: JSON = self.call(
            "PUT", job_path(name), json=dict(definition), headers={"If-Match": f'"{version}"'}
        )
        return job

    def delete_job(self, name: str, version: int | None = None) -> None:
        headers = {"If-Match": f'"{version}"'} if version is not None else None
        self.request("DELETE", job_path(name), headers=headers)

    def job_action(self, name: str, action: str) -> JSON:
        """enable, disable, pause or resume."""
        job: JSON = self.call("POST", job_path(name, action))
        return job

    def trigger(
        self, name: str, params: Mapping[str, Any], idempotency_key: str | None = None
    ) -> tuple[JSON, bool]:
        """Run a job now; returns the run and whether this request created it."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = {"params": dict(params)} if params else None
        response = self.request("POST", job_path(name, "trigger"), json=body, headers=headers)
        run: JSON = self._json(response)
        return run, response.status_code == 201

    def explain(self, name: str, at: str) -> JSON:
        answer: JSON = self.call("GET", job_path(name, "explain"), params={"at": at})
        return answer

    def preview_job(self, name: str, count: int, after: str | None = None) -> JSON:
        preview: JSON = self.call(
            "GET", job_path(name, "preview"), params={"count": count, "after": after}
        )
        return preview

    def check_definition(self, definition: Mapping[str, Any]) -> None:
        """Validate an unsaved definition as a create would, saving nothing.

        The API has no dry-run create; previewing the definition validates it
        whole (its type's params included) and names each bad field, which the
        API reports under ``definition.``: that prefix is taken off here.
        """
        try:
            self.request(
                "POST", "/api/v1/preview", json={"definition": dict(definition), "count": 1}
            )
        except ApiError as exc:
            if not exc.errors:
                raise
            errors = [(f.removeprefix("definition."), m) for f, m in exc.errors]
            raise ApiError(
                exc.status, exc.title, exc.detail, errors, exc.kind, exc.hint, exc.called
            ) from None

    # -- runs --------------------------------------------------------------------------

    def list_runs(self, limit: int | None, **filters: Any) -> list[JSON]:
        return list(self.pages("/api/v1/runs", filters, limit))

    def get_run(self, run_id: str) -> JSON:
        run: JSON = self.call("GET", f"/api/v1/runs/{quote(run_id, safe='')}")
        return run

    def cancel_run(self, run_id: str) -> JSON:
        run: JSON = self.call("POST", f"/api/v1/runs/{quote(run_id, safe='')}/cancel")
        return run


class MailerClient(ApiClient):
    """The mailer's API (``/api/v1/mail``, ``/api/v1/contacts``): same token, own URL."""

    what = "the mailer API"
    where_hint = "is the mailer running (`make run` in the project)? Set JOBWIRE_MAILER_URL"
    foreign_hint = "the mailer's URL? Set JOBWIRE_MAILER_URL"

    def send_email(self, command: Mapping[str, Any]) -> JSON:
        """Queue a SendEmail: ``{id, status, message_id, created}``."""
        answer: JSON = self.call("POST", "/api/v1/mail", json=dict(command))
        return answer

    def list_emails(self, limit: int, **filters: Any) -> tuple[list[JSON], str | None]:
        """Up to ``limit`` emails, newest first, page after page by cursor; and the
        cursor of the page after them (None: no more)."""
        items: list[JSON] = []
        cursor: str | None = None
        while len(items) < limit:
            size = min(PAGE_SIZE, limit - len(items))
            page = self.call(
                "GET", "/api/v1/mail", params={**filters, "limit": size, "cursor": cursor}
            )
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if cursor is None:
                break
        return items, cursor

    def get_email(self, email_id: str) -> JSON:
        email: JSON = self.call("GET", f"/api/v1/mail/{quote(email_id, safe='')}")
        return email

    def contacts(self, prefix: str, limit: int) -> list[JSON]:
        found: list[JSON] = self.call(
            "GET", "/api/v1/contacts", params={"prefix": prefix, "limit": limit}
        )
        return found


class SearchClient(ApiClient):
    """The search sync's API (``/api/v1/search``): same token, own URL.

    Both calls take a search job as the admin API holds it (type and params):
    only the search sync can resolve the secrets its parameters name.
    """

    what = "the search API"
    where_hint = "is the search sync running (`make run` in the project)? Set JOBWIRE_SEARCH_URL"
    foreign_hint = "the search sync's URL? Set JOBWIRE_SEARCH_URL"

    def status(self, job_type: str, params: Mapping[str, Any]) -> JSON:
        """Alias → index, documents in source and index, watermark, lag, capture."""
        body = {"type": job_type, "params": dict(params)}
        answer: JSON = self.call("POST", "/api/v1/search/status", json=body)
        return answer

    def install(self, job_type: str, params: Mapping[str, Any], *, apply: bool) -> JSON:
        """Install the change capture (``apply``), or only return its SQL."""
        body = {"type": job_type, "params": dict(params), "apply": apply}
        answer: JSON = self.call("POST", "/api/v1/search/install", json=body)
        return answer


def _reason(exc: Exception) -> str:
    text = str(exc)
    # "[Errno 111] Connection refused" → "connection refused"
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text.lower() if text else type(exc).__name__
