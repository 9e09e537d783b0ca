"""The CLI's pure parts, without servers: files, inputs, config, the apply plan."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from jobwire.cli.apply import Action, definitions_of, plan
from jobwire.cli.client import ApiClient, ApiError, CliError
from jobwire.cli.config import DEFAULT_API_URL, ConfigError, load_config, shown_url
from jobwire.cli.formats import DocumentError, dump_yaml, load_document
from jobwire.cli.inputs import parse_params, parse_time


def test_yaml_is_read_as_yaml_1_2_so_people_get_what_they_wrote() -> None:
    text = """
after: [{job: upstream, on: failed}]
tags: [yes, no, off, "12:30", 12:30, 0755, 1_000]
start_at: 2026-01-01T00:00:00Z
count: 3
ratio: 1.5e3
enabled: true
nothing: null
"""
    assert load_document(text, "jobs.yaml") == {
        "after": [{"job": "upstream", "on": "failed"}],
        "tags": ["yes", "no", "off", "12:30", "12:30", "0755", "1_000"],
        "start_at": "2026-01-01T00:00:00Z",
        "count": 3,
        "ratio": 1500.0,
        "enabled": True,
        "nothing": None,
    }


@pytest.mark.parametrize(
    "value",
    ["on", "yes", "No", "12:30", "1e3", "0755", "2026-01-01", "null", "", "true", "3", ".inf"],
)
def test_written_yaml_reads_back_the_same(value: str) -> None:
    data = {"tags": [value], "n": 3, "x": 2.5, "flag": False, "none": None, "on": value}
    assert load_document(dump_yaml(data), "out.yaml") == data


def test_a_broken_file_names_its_line() -> None:
    with pytest.raises(DocumentError, match=r"jobs.yaml: not valid YAML: .* \(line \d+\)"):
        load_document("jobs:\n  - name: a\n  - {name: b\n", "jobs.yaml")
    with pytest.raises(DocumentError, match=r"jobs.json: not valid JSON: .* \(line 1\)"):
        load_document("[{", "jobs.json")


def test_params_are_json_when_they_parse_and_strings_otherwise() -> None:
    assert parse_params(
        ["n=3", "flag=true", 'input={"a": [1]}', "who=ada", "empty=", "eq=a=b"]
    ) == {
        "n": 3,
        "flag": True,
        "input": {"a": [1]},
        "who": "ada",
        "empty": "",
        "eq": "a=b",
    }
    with pytest.raises(CliError, match="each value must be key=value"):
        parse_params(["=secret"])
    with pytest.raises(CliError, match="n is given twice"):
        parse_params(["n=1", "n=2"])


def test_times_are_iso_or_a_time_ago() -> None:
    now = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
    assert parse_time("now", "--at", now) == "2026-03-29T12:00:00+00:00"
    assert parse_time("1h30m", "--since", now) == "2026-03-29T10:30:00+00:00"
    assert parse_time("7d", "--since", now) == "2026-03-22T12:00:00+00:00"
    assert parse_time("2026-03-29T02:30Z", "--at") == "2026-03-29T02:30:00+00:00"
    assert parse_time("2026-03-29T02:30:00+02:00", "--at") == "2026-03-29T02:30:00+02:00"
    assert datetime.fromisoformat(parse_time("2026-03-29T02:30", "--at")).tzinfo is not None
    with pytest.raises(CliError, match="--at: 'soon' is not a time"):
        parse_time("soon", "--at")


def test_config_precedence_and_a_file_open_to_others(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('api_url = "http://file:1"\ntoken = "jw_from-file"\ncolour = "red"\n')
    config.chmod(0o640)
    warnings: list[str] = []
    env = {"JOBWIRE_CONFIG": str(config)}

    found = load_config(None, environ=env, warn=warnings.append)
    assert (found.api_url, found.token, found.token_source) == (
        "http://file:1",
        "jw_from-file",
        str(config),
    )
    assert "jw_from-file" not in repr(found)
    assert any("unknown key 'colour'" in w for w in warnings)
    assert any("mode 0640" in w and "chmod 600" in w for w in warnings)

    env |= {"JOBWIRE_API_URL": "http://env:2/", "JOBWIRE_TOKEN": "jw_from-env"}
    found = load_config(None, environ=env)
    assert (found.api_url, found.token, found.token_source) == (
        "http://env:2",
        "jw_from-env",
        "JOBWIRE_TOKEN",
    )
    assert load_config("https://option:3", environ=env).api_url == "https://option:3"

    nothing = load_config(None, environ={"JOBWIRE_CONFIG": str(tmp_path / "missing.toml")})
    assert (nothing.api_url, nothing.token) == (DEFAULT_API_URL, None)

    with pytest.raises(ConfigError, match="'http://api:1' must not carry a user or password"):
        load_config("http://ops:pw@api:1", environ={"JOBWIRE_CONFIG": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="must be http"):
        load_config("ftp://x", environ={"JOBWIRE_CONFIG": str(tmp_path / "missing.toml")})
    config.write_text("token = 3\n")
    with pytest.raises(ConfigError, match="token must be a string"):
        load_config(None, environ={"JOBWIRE_CONFIG": str(config)})
    config.write_text("token = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(None, environ={"JOBWIRE_CONFIG": str(config)})


def test_urls_are_shown_without_credentials() -> None:
    assert (
        shown_url("https://ops:pw@api.example:8443/jobwire") == "https://api.example:8443/jobwire"
    )
    assert shown_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


def test_a_problem_document_becomes_one_line_naming_each_field() -> None:
    response = httpx.Response(
        422,
        json={
            "type": "urn:jobwire:problem:validation",
            "title": "Invalid job definition",
            "status": 422,
            "detail": "…",
            "errors": [
                {"field": "schedule.cron.expression", "message": "hour: 25 is out of range 0-23"},
                {"field": "params.workflow", "message": "Field required"},
            ],
        },
    )
    error = ApiError.from_response(response)
    assert error.message == (
        "Invalid job definition (422): schedule.cron.expression: hour: 25 is out of range 0-23; "
        "params.workflow: Field required"
    )
    bare = ApiError.from_response(httpx.Response(502, text="<html>proxy</html>"))
    assert bare.message.startswith("Bad Gateway (502) — not an answer of the jobwire API")
    assert "proxy" not in bare.message


def test_an_error_names_the_url_it_called_and_a_stranger_is_named_as_such() -> None:
    # `make run` once put the listeners on 8080: `jobwire jobs list` said only
    # "Not Found (404)".
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})

    client = ApiClient("http://127.0.0.1:8080", "jw_x", transport=httpx.MockTransport(answer))
    with client, pytest.raises(ApiError) as caught:
        client.list_jobs()
    assert str(caught.value) == (
        "Not Found (404) — not an answer of the jobwire API: is this the scheduler's URL? "
        "Set JOBWIRE_API_URL or --api-url [GET http://127.0.0.1:8080/api/v1/jobs]"
    )


def _job(definition: dict[str, object], version: int = 1) -> dict[str, object]:
    return {"definition": definition, "version": version}


def test_the_plan_compares_complete_definitions() -> None:
    base = {
        "name": "a",
        "type": "start-workflow",
        "schedule": {"kind": "interval", "every": "PT15M"},
        "params": {"workflow": "w", "input": {"x": 1}},
    }
    stored = {
        **base,
        "schedule": {"kind": "interval", "every": "PT15M", "anchor": None},
        "params": {"input": {"x": 1}, "workflow": "w"},  # JSONB keeps no key order
        "description": "",
        "enabled": False,  # disabled by an operator
        "priority": 0,
        "retry_backoff_seconds": 10.0,
    }
    changes = plan([base], {"a": _job(stored, 4)}, {"old": 2}, prune=False)
    assert [(c.action, c.name) for c in changes] == [(Action.UNCHANGED, "a")]

    pinned = {**base, "enabled": True, "priority": 7}
    [update, delete] = plan([pinned], {"a": _job(stored, 4)}, {"old": 2}, prune=True)
    assert (update.action, update.version, update.body) == (Action.UPDATE, 4, pinned)
    assert "-enabled: false" in update.diff
    assert "+priority: 7" in update.diff
    assert not any(
        "workflow" in line
        for line in update.diff
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    )
    assert (delete.action, delete.name, delete.version) == (Action.DELETE, "old", 2)

    [create] = plan([base], {}, {}, prune=False)
    assert (create.action, create.body) == (Action.CREATE, base)


def test_definitions_come_as_a_list_or_under_jobs() -> None:
    assert definitions_of([{"name": "a"}], "f") == [{"name": "a"}]
    assert definitions_of({"jobs": [{"name": "a"}]}, "f") == [{"name": "a"}]
    assert definitions_of({"jobs": None}, "f") == []
    with pytest.raises(CliError, match="the file is empty"):
        definitions_of(None, "f")
    with pytest.raises(CliError, match="2 problem"):
        definitions_of([{"name": "a"}, {"name": "a"}, "x"], "f")


def test_a_server_that_is_not_the_api_is_named_as_such() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="<html>welcome</html>")

    client = ApiClient("http://elsewhere:8080", "jw_secret", transport=httpx.MockTransport(answer))
    with client, pytest.raises(CliError) as caught:
        client.get_job("a b/c")
    assert str(caught.value) == (
        "http://elsewhere:8080 did not answer with JSON: is that the jobwire API?"
    )
    assert seen[0].url.raw_path == b"/api/v1/jobs/a%20b%2Fc"
    assert seen[0].headers["authorization"] == "Bearer jw_secret"
    assert "jw_secret" not in str(caught.value)
