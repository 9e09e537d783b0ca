"""Fuzz the admin API of a running scheduler, over HTTP, while a canary job fires.

One real ``jobwire scheduler`` process (PostgreSQL + NATS) takes everything
Hypothesis draws: job definitions (scheduled and listener jobs), updates with
right and wrong versions and renames onto taken names, triggers with parameter
overrides, previews, backfills, operator actions and odd queries, as JSON, as
bytes no parser accepts, and under wrong content types. For every answer:

* never a 5xx, and always an answer (a request that hangs is a finding too);
* every 400, 413, 415, 422 and 428 names its field(s) in ``errors``; a 409 says why;
* a non-JSON content type is refused with 415; a request without a token gets
  401 whatever its body (authentication comes before reading the body);
* a definition accepted (201/200) can fire (an enabled scheduled job has a next
  run) and can be published (its params fit in one NATS message).

Throughout, a canary job fires every second: every slot must have exactly one
run whose StartWorkflow arrived on NATS within ``CANARY_LAG`` of its slot, and
the process must never exit. The canary keeps the firing loop's next due job
one second away, which hides a job it cannot handle as the next one; so at the
end every job due within a day is paused and the later ones one by one, each
becoming the next due job in turn, while the process must stay up and, all
resumed, fire the canary again. Last the scheduler is restarted on the same
database, with every definition the fuzzing left in it, and must come up and
fire the canary (a stored definition that crashes the firing loop is the worst
finding of all).

Profiles: see conftest.py (``JOBWIRE_FUZZ_PROFILE=ci|fuzz``). With
``JOBWIRE_FUZZ_SURVEY=<file>`` every violation is written to that file (one
JSON object per line) and the test fails at the end instead of at the first,
to list every distinct finding of a run.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import pytest
from fuzz_server import LiveScheduler, fuzz_profile
from fuzz_strategies import (
    JSON,
    Encoded,
    backfill_bodies,
    definitions,
    encoded,
    json_values,
    known,
    odd_strings,
    preview_bodies,
    set_huge_limit,
    times,
    trigger_bodies,
    valid_definitions,
)
from fuzz_strategies import dumps as _json_bytes
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from jobwire.testing import wait_for

pytestmark = pytest.mark.integration

PROFILE = fuzz_profile()
CANARY = "fuzz-canary"
CANARY_WORKFLOW = "fuzz-canary"
CANARY_LAG = timedelta(seconds=5)  # lenient: CI machines are busy
# A definition's params travel in one NATS message (JobDue / StartWorkflow /
# the listener mirror); NATS refuses messages over 1 MiB by default.
NATS_MAX_PAYLOAD = 1024 * 1024
# Refusals that must say which input is wrong.
NAMED = {400, 413, 415, 422, 428}
LISTENER_TYPES = {
    "kafka-subscriber",
    "message-bus-listener",
    "file-listener",
    "servicebus-listener",
    "email-listener",
}
SURVEY = os.environ.get("JOBWIRE_FUZZ_SURVEY")


class Finding(AssertionError):
    """A response or state that breaks one of the properties above."""


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    return content_type.split(";")[0].strip().lower()


def _json_media(content_type: str | None) -> bool | None:
    """True: a JSON type; False: certainly not JSON; None: ambiguous (absent, */*)."""
    media = _media_type(content_type)
    if media in {None, "", "*/*"}:
        return None
    assert media is not None
    return media == "application/json" or media.endswith("+json")


class World:
    """What the run knows about the server: jobs created and their versions."""

    live: LiveScheduler
    admin: httpx.Client
    # The canary's runs are read on connections of their own: after an unhandled
    # error the server drops the fuzzing client's connection (a finding of its own).
    observer: httpx.Client
    anonymous: httpx.Client
    versions: ClassVar[dict[str, int]] = {}
    findings: ClassVar[list[dict[str, Any]]] = []
    canary_since: datetime
    seen: ClassVar[set[str]] = set()
    statuses: ClassVar[Counter[str]] = Counter()

    @classmethod
    def report(cls, kind: str, request: str, response: httpx.Response | None, note: str) -> None:
        entry = {
            "kind": kind,
            "request": request,
            "status": response.status_code if response is not None else None,
            "response": response.text[:2000] if response is not None else None,
            "note": note,
        }
        cls.findings.append(entry)
        if SURVEY:
            with open(SURVEY, "a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")
            return
        raise Finding(f"{kind}: {note}\nrequest: {request}\nresponse: {entry['response']}")


def send(
    method: str,
    path: str,
    body: Encoded | None = None,
    *,
    client: httpx.Client | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> httpx.Response | None:
    client = client or World.admin
    sent = dict(headers or {})
    if body is not None and body.content_type is not None:
        sent["Content-Type"] = body.content_type
    shown = body.short() if body else None
    described = f"{method} {path} params={params} headers={sent} body={shown}"
    try:
        response = client.request(
            method,
            path,
            content=body.content if body is not None else None,
            headers=sent,
            params=params,
        )
    except httpx.TransportError as exc:
        alive = World.live.alive()
        World.report(
            "no-answer",
            described,
            None,
            f"{type(exc).__name__}: {exc}; process {'alive' if alive else 'EXITED'}",
        )
        return None
    World.statuses[
        f"{method} {response.request.url.path.split('/')[-1]} {response.status_code}"
    ] += 1
    check(response, described, body)
    return response


def check(response: httpx.Response, described: str, body: Encoded | None) -> None:
    status = response.status_code
    if status >= 500:
        World.report("5xx", described, response, f"status {status}")
        return
    # A body of another media type is not a JSON body: 415, before or after a 404.
    sent_type = body.content_type if body is not None else None
    if body is not None and _json_media(sent_type) is False and status not in {401, 403, 404, 415}:
        World.report(
            "wrong-content-type",
            described,
            response,
            f"{sent_type!r} answered {status}, expected 415",
        )
    if status < 400:
        return
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        World.report("not-a-problem", described, response, "a 4xx that is not problem+json")
        return
    try:
        problem = response.json()
    except ValueError:
        World.report("not-a-problem", described, response, "an unparsable problem document")
        return
    errors = problem.get("errors")
    if status in NAMED:
        if not errors:
            World.report("unnamed", described, response, f"{status} without errors")
            return
        for error in errors:
            field = error.get("field") if isinstance(error, dict) else None
            if not isinstance(field, str) or not field:
                World.report("unnamed", described, response, f"{status}: an error without field")
                return
    if status == 409 and not (problem.get("detail") or errors):
        World.report("unnamed", described, response, "409 without detail")


def check_accepted(response: httpx.Response, described: str, definition: Any) -> None:
    """A definition the API accepted must be able to fire, and to be published."""
    detail = response.json()
    saved = detail["definition"]
    params_size = len(json.dumps(saved.get("params", {}), ensure_ascii=False).encode())
    if params_size >= NATS_MAX_PAYLOAD:
        World.report(
            "unpublishable",
            described,
            response,
            f"accepted params of {params_size} bytes: no NATS message can carry them",
        )
    scheduled = saved.get("schedule") is not None and saved.get("type") not in LISTENER_TYPES
    if scheduled and detail["enabled"] and not detail["paused"] and detail["next_run_at"] is None:
        World.report(
            "never-fires",
            described,
            response,
            f"accepted an enabled job with no next run: {json.dumps(saved)[:500]}",
        )


def job_path(name: str, tail: str = "") -> str:
    return f"/api/v1/jobs/{quote(name, safe='')}{tail}"


def canary_runs(since: datetime, until: datetime) -> list[dict[str, Any]]:
    """The canary's runs with slots in [since, until), read page by page. The range
    is closed at the top so that runs made meanwhile do not shift the pages
    (newest first) and show a run twice."""
    runs: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        response = World.observer.get(
            job_path(CANARY, "/runs"),
            params={
                "from": since.isoformat(),
                "to": until.isoformat(),
                "limit": 500,
                "offset": offset,
            },
        )
        assert response.status_code == 200, response.text
        page = response.json()
        runs.update((run["id"], run) for run in page["items"])
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return list(runs.values())


def check_canary(until: datetime) -> None:
    """Every whole second from the canary's start to ``until`` has exactly one
    scheduled run, whose StartWorkflow arrived within CANARY_LAG of its slot."""
    since = World.canary_since
    end = until + timedelta(seconds=1)
    runs = [r for r in canary_runs(since, end) if r["trigger"] != "manual"]
    by_slot: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_slot[datetime.fromisoformat(run["scheduled_for"])].append(run)
    arrivals: dict[str, datetime] = {}
    for arrival in list(World.live.arrivals):
        if arrival.run_id is not None:
            arrivals.setdefault(arrival.run_id, arrival.received)
    slot = since.replace(microsecond=0) + timedelta(seconds=2)
    problems = []
    while slot <= until:
        found = by_slot.get(slot, [])
        if len(found) != 1:
            problems.append(f"{slot.isoformat()}: {len(found)} runs")
        else:
            [run] = found
            received = arrivals.get(run["id"])
            if run["status"] in {"skipped", "missed"}:
                problems.append(f"{slot.isoformat()}: {run['status']} ({run.get('reason')})")
            elif received is None:
                problems.append(f"{slot.isoformat()}: no StartWorkflow arrived ({run['status']})")
            elif received - slot > CANARY_LAG:
                problems.append(f"{slot.isoformat()}: arrived {received - slot} late")
        slot += timedelta(seconds=1)
    key = "; ".join(problems[:5])
    if problems and key not in World.seen:
        World.seen.add(key)
        World.report(
            "canary",
            f"canary slots {since.isoformat()} .. {until.isoformat()}",
            None,
            f"{len(problems)} bad slots, first: {key}",
        )


def process_alive() -> None:
    if not World.live.alive():
        World.report(
            "crash",
            "the scheduler process",
            None,
            f"exited with {World.live.instance.popen.returncode if World.live.instance else '?'}:"
            f"\n{World.live.instance.log_tail(30) if World.live.instance else ''}",
        )
        raise Finding("the scheduler process exited")  # nothing after this can be checked


def _known() -> list[str]:
    # Never the canary: an edit, rename or delete of it would end the lag check.
    return sorted(name for name in World.versions if name != CANARY)


def _names() -> st.SearchStrategy[str]:
    return st.one_of(known(_known), st.sampled_from(["fz-nope", "fz missing"]))


class ApiFuzz(RuleBasedStateMachine):
    """One sequence of requests against the shared scheduler (its state carries over)."""

    @rule(data=st.data())
    def create(self, data: st.DataObject) -> None:
        definition = data.draw(definitions(_known), label="definition")
        body = data.draw(encoded(definition), label="encoded")
        response = send("POST", "/api/v1/jobs", body)
        if response is not None and response.status_code == 201:
            check_accepted(response, f"POST /api/v1/jobs {body.short()}", definition)
            World.versions[response.json()["name"]] = int(response.headers["ETag"].strip('"'))

    @initialize(data=st.data())
    def start_with_a_valid_job(self, data: st.DataObject) -> None:
        self.create_valid(data)

    @rule(data=st.data())
    def create_valid(self, data: st.DataObject) -> None:
        """A definition within every documented bound (extreme values included):
        most of these are accepted, and then the scheduler must live with them."""
        definition = data.draw(valid_definitions(_known), label="definition")
        response = send("POST", "/api/v1/jobs", Encoded(_json_bytes(definition), JSON))
        if response is not None and response.status_code == 201:
            check_accepted(
                response, f"POST /api/v1/jobs {json.dumps(definition)[:600]}", definition
            )
            World.versions[response.json()["name"]] = int(response.headers["ETag"].strip('"'))

    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        name = data.draw(_names(), label="name")
        definition = data.draw(definitions(_known), label="definition")
        # Half the time keep the name (an edit), else whatever the strategy drew:
        # a rename, often onto another existing job.
        if isinstance(definition, dict) and data.draw(st.booleans(), label="same name"):
            definition = {**definition, "name": name}
        version = World.versions.get(name, 1)
        etag = data.draw(
            st.sampled_from(
                [
                    f'"{version}"',
                    f'W/"{version}"',
                    f'"{version + 1}"',
                    '"0"',
                    '"-1"',
                    '"99999999999"',
                    "*",
                    "",
                    "garbage",
                    None,
                ]
            ),
            label="If-Match",
        )
        if isinstance(definition, dict) and data.draw(st.booleans(), label="version in body"):
            definition = {**definition, "version": data.draw(json_values() | st.just(version))}
        body = data.draw(encoded(definition), label="encoded")
        headers = {"If-Match": etag} if etag is not None else {}
        response = send("PUT", job_path(name), body, headers=headers)
        if response is not None and response.status_code == 200:
            check_accepted(response, f"PUT {job_path(name)} {body.short()}", definition)
            saved = response.json()
            if saved["name"] != name:
                World.versions.pop(name, None)
            World.versions[saved["name"]] = saved["version"]

    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        """A valid edit with the right version that renames a job, often onto
        another job's name: a conflict (409) to report, never a failure."""
        name = data.draw(known(_known), label="name")
        # Drawn whatever the state: what Hypothesis draws must not depend on it.
        definition = data.draw(valid_definitions(_known), label="definition")
        if name not in World.versions:
            return
        headers = {"If-Match": f'"{World.versions[name]}"'}
        response = send(
            "PUT", job_path(name), Encoded(_json_bytes(definition), JSON), headers=headers
        )
        if response is not None and response.status_code == 200:
            check_accepted(
                response, f"PUT {job_path(name)} {json.dumps(definition)[:600]}", definition
            )
            World.versions.pop(name, None)
            World.versions[response.json()["name"]] = response.json()["version"]

    @rule(data=st.data())
    def trigger(self, data: st.DataObject) -> None:
        name = data.draw(_names(), label="name")
        trigger = data.draw(trigger_bodies(), label="trigger")
        body = None if trigger is None else data.draw(encoded(trigger), label="encoded")
        headers = {}
        if data.draw(st.booleans(), label="idempotency"):
            headers["Idempotency-Key"] = data.draw(
                st.one_of(st.sampled_from(["k1", "", "x" * 201]), odd_strings()), label="key"
            )
        send("POST", job_path(name, "/trigger"), body, headers=_headers(headers))

    @rule(data=st.data())
    def preview(self, data: st.DataObject) -> None:
        body = data.draw(encoded(data.draw(preview_bodies(), label="preview")), label="encoded")
        send("POST", "/api/v1/preview", body)

    @rule(data=st.data())
    def backfill(self, data: st.DataObject) -> None:
        name = data.draw(_names(), label="name")
        body = data.draw(encoded(data.draw(backfill_bodies(), label="backfill")), label="enc")
        send("POST", job_path(name, "/backfill"), body)

    @rule(
        data=st.data(),
        action=st.sampled_from(["enable", "disable", "pause", "resume"]),
    )
    def act(self, data: st.DataObject, action: str) -> None:
        name = data.draw(_names(), label="name")
        send("POST", job_path(name, f"/{action}"))

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        # Rarely: the jobs the run accumulates are what the restart check is about.
        if data.draw(st.integers(0, 3), label="delete?") != 0:
            return
        name = data.draw(_names(), label="name")
        headers = {}
        if data.draw(st.booleans(), label="If-Match"):
            headers["If-Match"] = f'"{World.versions.get(name, 1)}"'
        response = send("DELETE", job_path(name), headers=headers)
        if response is not None and response.status_code == 204:
            World.versions.pop(name, None)

    @rule(data=st.data())
    def query(self, data: st.DataObject) -> None:
        name = data.draw(_names(), label="name")
        what = data.draw(st.sampled_from(["explain", "preview", "runs", "jobs", "all-runs"]))
        value = data.draw(times().map(str) | odd_strings(), label="value")
        path, params = {
            "explain": (job_path(name, "/explain"), {"at": value}),
            "preview": (
                job_path(name, "/preview"),
                {"after": value, "count": data.draw(st.sampled_from([1, 1000, 0, 1001]))},
            ),
            "runs": (job_path(name, "/runs"), {"from": value, "to": value}),
            "jobs": ("/api/v1/jobs", {"q": value, "tag": value, "sort": value}),
            "all-runs": ("/api/v1/runs", {"from": value, "status": value}),
        }[what]
        # A lone surrogate cannot go into a URL (httpx encodes it as UTF-8).
        send("GET", path, params={k: _utf8(str(v)) for k, v in params.items()})

    @rule(data=st.data())
    def anonymous(self, data: st.DataObject) -> None:
        """Without a token, whatever the body: 401, not a verdict on the body."""
        if data.draw(st.integers(0, 2), label="anonymous?") != 0:
            return
        method, path = data.draw(
            st.sampled_from(
                [
                    ("POST", "/api/v1/jobs"),
                    ("PUT", job_path(CANARY)),
                    ("POST", "/api/v1/preview"),
                    ("POST", job_path(CANARY, "/trigger")),
                    ("POST", job_path(CANARY, "/backfill")),
                ]
            ),
            label="endpoint",
        )
        body = data.draw(encoded(data.draw(definitions(), label="body")), label="encoded")
        response = send(method, path, body, client=World.anonymous)
        if response is not None and response.status_code != 401:
            World.report(
                "auth-after-body",
                f"{method} {path} (no token) {body.short()}",
                response,
                f"answered {response.status_code} without a token",
            )

    @invariant()
    def scheduler_alive(self) -> None:
        process_alive()

    def teardown(self) -> None:
        process_alive()
        check_canary(datetime.now(UTC) - CANARY_LAG - timedelta(seconds=1))


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _headers(values: dict[str, str]) -> dict[str, str]:
    # httpx sends header values as ASCII, and h11 refuses surrounding whitespace
    # (HTTP strips it): what a client cannot send is not sent.
    return {
        key: "".join(c for c in value if c.isascii() and c.isprintable()).strip(" \t")
        for key, value in values.items()
    }


@pytest.mark.timeout(PROFILE.timeout)
def test_admin_api_survives_fuzzing_and_the_canary_keeps_firing(
    live_scheduler: LiveScheduler,
) -> None:
    set_huge_limit(PROFILE.huge_string)
    World.live = live_scheduler
    World.versions.clear()
    World.findings.clear()
    with (
        live_scheduler.client() as admin,
        live_scheduler.client(authorized=False) as anonymous,
        live_scheduler.client() as observer,
    ):
        World.admin, World.anonymous, World.observer = admin, anonymous, observer
        live_scheduler.subscribe_canary(CANARY_WORKFLOW)
        World.canary_since = datetime.now(UTC)
        _create_canary_at_now()
        machine = hypothesis_seed(PROFILE.seed)(ApiFuzz) if PROFILE.seed is not None else ApiFuzz
        started = time.monotonic()
        try:
            run_state_machine_as_test(machine, settings=PROFILE.hypothesis)
        finally:
            print(
                f"fuzz: profile {os.environ.get('JOBWIRE_FUZZ_PROFILE', 'ci')}, seed "
                f"{PROFILE.seed}, {time.monotonic() - started:.0f} s, jobs left "
                f"{len(World.versions)}, answers {sorted(World.statuses.items())}"
            )
        process_alive()
        check_canary(datetime.now(UTC) - CANARY_LAG - timedelta(seconds=1))
        _each_job_as_the_next_due(live_scheduler)
        _restart_and_fire(live_scheduler)
    if World.findings:
        kinds = sorted({f["kind"] for f in World.findings})
        raise Finding(f"{len(World.findings)} findings ({', '.join(kinds)}); see {SURVEY}")


def _create_canary_at_now() -> None:
    response = World.admin.post(
        "/api/v1/jobs",
        json={
            "name": CANARY,
            "type": "start-workflow",
            "description": "fires every second while the fuzz test runs",
            "schedule": {"kind": "cron", "expression": "* * * * * *"},
            "params": {"workflow": CANARY_WORKFLOW},
            "misfire": {"policy": "fire_all", "max_catch_up": 1000, "grace_seconds": 3600},
            "overlap": {"policy": "allow", "max_parallel": 1000},
        },
    )
    assert response.status_code == 201, response.text
    World.versions[CANARY] = int(response.headers["ETag"].strip('"'))


def _stays_up(live: LiveScheduler, seconds: float) -> bool:
    """Whether the process is still running after ``seconds`` of watching it."""
    try:
        live.background.run(
            wait_for(lambda: not live.alive(), timeout=seconds), timeout=seconds + 5
        )
    except TimeoutError:
        return True
    return False


def _each_job_as_the_next_due(live: LiveScheduler) -> None:
    """The firing loop sleeps until its next due job: a job whose next run it cannot
    handle breaks it only once it is the *next* one, which the canary (due every
    second) otherwise never lets happen. So pause every job due within a day, then
    the later ones one by one in order, each becoming the next due job in turn,
    and watch the process stay up; then resume them all."""
    jobs = World.observer.get("/api/v1/jobs", params={"sort": "next_run_at", "limit": 500})
    assert jobs.status_code == 200, jobs.text
    due = [j for j in jobs.json()["items"] if j["next_run_at"] and not j["paused"]]
    soon = datetime.now(UTC) + timedelta(days=1)
    paused = []

    def pause(job: dict[str, Any]) -> None:
        response = World.observer.post(job_path(job["name"], "/pause"))
        assert response.status_code == 200, response.text
        paused.append(job["name"])

    for job in due:
        if _aware(job["next_run_at"]) < soon:
            pause(job)
    later = [job for job in due if job["name"] not in paused]
    print(
        f"fuzz: {len(paused)} jobs due within a day paused; later ones, one by one: "
        f"{[(j['name'], j['next_run_at']) for j in later]}"
    )
    for job in later:
        if not _stays_up(live, 1.0):
            World.report(
                "crash",
                f"job {job['name']!r} as the next due job",
                None,
                f"the scheduler exited with the next run of {job['name']!r} at "
                f"{job['next_run_at']} being the next due:\n"
                f"{live.instance.log_tail(20) if live.instance else ''}",
            )
            raise Finding("the scheduler process exited")
        pause(job)
    if not _stays_up(live, 1.0):
        World.report("crash", "every job paused", None, "the scheduler exited")
        raise Finding("the scheduler process exited")
    resumed = datetime.now(UTC)
    for name in paused:
        response = World.observer.post(job_path(name, "/resume"))
        assert response.status_code == 200, response.text
    # Up is not enough: a firing loop that died inside a running process fires nothing.
    if not _canary_fires(live, since=resumed, runs=2, timeout=20):
        World.report(
            "firing-stopped",
            "after each job was the next due one",
            None,
            "the process is up but the canary fired fewer than 2 times in 20 s:\n"
            f"{live.instance.log_tail(10) if live.instance else ''}",
        )


def _canary_fires(live: LiveScheduler, *, since: datetime, runs: int, timeout: float) -> bool:
    headers = {"Authorization": f"Bearer {live.token}"}

    async def fired() -> bool:
        if not live.alive():
            return False
        async with httpx.AsyncClient(base_url=live.base_url, headers=headers) as client:
            response = await client.get(
                job_path(CANARY, "/runs"), params={"from": since.isoformat(), "limit": 10}
            )
        return len([r for r in response.json()["items"] if r["status"] == "succeeded"]) >= runs

    try:
        live.background.run(wait_for(fired, timeout=timeout), timeout=timeout + 10)
    except TimeoutError:
        return False
    return True


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # the API answered a naive time: a finding of its own
        World.report("naive-time", "GET /api/v1/jobs", None, f"next_run_at {text!r} is naive")
        moment = moment.replace(tzinfo=UTC)
    return moment


def _restart_and_fire(live: LiveScheduler) -> None:
    """Stop the scheduler, start it on the same database (every definition the run
    left in it), and require it to come up and fire the canary again."""
    code = live.stop()
    if code != 0:
        World.report("crash", "SIGTERM", None, f"the scheduler exited with {code} on SIGTERM")
    try:
        live.start()
    except AssertionError as exc:  # exited before it became ready
        World.report("crash-on-restart", "restart", None, str(exc))
        raise
    restarted = datetime.now(UTC)
    if not _canary_fires(live, since=restarted, runs=3, timeout=30):
        World.report(
            "restart",
            "restart",
            None,
            "fewer than 3 canary runs in 30 s after the restart:\n"
            f"{live.instance.log_tail(30) if live.instance else ''}",
        )
    process_alive()
    with live.client() as admin:
        healthz = admin.get("/healthz")
    if healthz.status_code != 200:
        World.report("restart", "GET /healthz", healthz, "not 200 after the restart")
