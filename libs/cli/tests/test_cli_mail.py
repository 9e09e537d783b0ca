"""`jobwire mail …` and `jobwire contacts` against a real mailer and scheduler."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from cli_harness import Jobwire, MailSystem, run_job

from jobwire.cli import devfile
from jobwire.cli.config import load_mailer_config

pytestmark = pytest.mark.integration


async def test_send_then_show_the_attempt_and_the_server_reply(
    jobwire_mail: Jobwire, mail_system: MailSystem
) -> None:
    key = f"cli-{uuid.uuid4().hex[:8]}"
    sent = await jobwire_mail.ok(
        "mail", "send", "--to", f"Ann Example <{key}@example.com>", "--cc", f"cc-{key}@example.com",
        "--subject", "Case 42", "--text", "Hello.", "--html", "<p>Hello.</p>",
        "--conversation", "case-42", "--key", key, "-o", "json",
        role="operator",
    )  # fmt: skip
    answer = json.loads(sent.stdout)
    assert (answer["status"], answer["created"]) == ("queued", True)
    again = await jobwire_mail.ok(
        "mail", "send", "--to", "x@example.com", "--subject", "other", "--text", "t", "--key", key,
        role="operator",
    )  # fmt: skip
    assert again.stdout.startswith(f"email {answer['id']} queued (Message-ID ")
    assert f"queued earlier with idempotency key '{key}'" in again.stdout

    run = await run_job(mail_system.scheduler, "email-send")
    assert run["status"] == "succeeded", run
    [received] = await mail_system.smtp.wait_for_messages(1, rcpt=f"{key}@example.com")
    assert received.message["Subject"] == "Case 42"
    assert received.message["To"] == f"Ann Example <{key}@example.com>"

    shown = await jobwire_mail.ok("mail", "show", answer["id"], role="viewer")
    assert "Attempts:" in shown.stdout
    attempt = next(line for line in shown.stdout.splitlines() if line.startswith("│ 1 "))
    assert "sent" in attempt
    assert "250" in attempt
    assert "Conversation     case-42" in shown.stdout
    detail = json.loads((await jobwire_mail.ok("-o", "json", "mail", "show", answer["id"])).stdout)
    assert detail["status"] == "sent"
    assert detail["accepted"] == [f"{key}@example.com", f"cc-{key}@example.com"]
    [history] = detail["attempt_history"]
    assert (history["outcome"], history["code"]) == ("sent", 250)
    assert history["reply"] in attempt  # the server's own words, in the table too

    missing = await jobwire_mail("mail", "show", str(uuid.uuid4()), role="viewer")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("jobwire: Not found (404): no email")
    assert f"[GET {mail_system.mailer_url}/api/v1/mail/" in missing.stderr


async def test_send_from_a_file_and_refusals_name_the_field(
    jobwire_mail: Jobwire, tmp_path: Path
) -> None:
    command = {
        "idempotency_key": "from-file-1",
        "to": [{"address": "file@example.com"}],
        "subject": "From a file",
        "text": "t",
        "tags": ["cli"],
    }
    path = tmp_path / "command.json"
    path.write_text(json.dumps(command))
    sent = await jobwire_mail.ok(
        "mail", "send", "--file", str(path), "--conversation", "case-9", "-o", "json",
        role="operator",
    )  # fmt: skip
    email_id = json.loads(sent.stdout)["id"]
    shown = json.loads((await jobwire_mail.ok("mail", "show", email_id, "-o", "json")).stdout)
    assert shown["idempotency_key"] == "from-file-1"
    assert (shown["conversation_id"], shown["tags"]) == ("case-9", ["cli"])

    both = await jobwire_mail("mail", "send", "--file", str(path), "--subject", "x")
    assert both.exit_code == 1
    assert "leave out --subject" in both.stderr

    invalid = await jobwire_mail("mail", "send", "--to", "", "--subject", "x" * 999)
    assert invalid.exit_code == 1
    assert invalid.stderr.startswith("jobwire: Invalid input (422): ")
    assert "to.0.address:" in invalid.stderr
    assert "subject:" in invalid.stderr
    unknown = await jobwire_mail("mail", "send", "--to", "a@b.c", "--text", "t", "--account", "x")
    assert "account: unknown account 'x'" in unknown.stderr

    viewer = await jobwire_mail("mail", "send", "--to", "a@b.c", "--text", "t", role="viewer")
    assert viewer.exit_code == 1
    assert "Forbidden (403): this needs the operator role" in viewer.stderr


async def test_list_filters_and_pages(jobwire_mail: Jobwire, mail_system: MailSystem) -> None:
    ids = []
    for n in range(3):
        extra = ["--conversation", "case-list"] if n != 1 else []
        sent = await jobwire_mail.ok(
            "mail", "send", "--to", f"list-{n}@example.com", "--subject", f"List {n}",
            "--text", "t", *extra, "-o", "json",
        )  # fmt: skip
        ids.append(json.loads(sent.stdout)["id"])

    table = await jobwire_mail.ok("mail", "list", role="viewer")
    header = table.stdout.splitlines()[1]
    assert "Email" in header
    assert "Last reply" in header
    assert all(email_id in table.stdout for email_id in ids)
    page = json.loads((await jobwire_mail.ok("mail", "list", "--limit", "2", "-o", "json")).stdout)
    assert [e["id"] for e in page["items"]] == ids[:0:-1]
    assert page["next_cursor"]
    case = yaml.safe_load(
        (await jobwire_mail.ok("-o", "yaml", "mail", "list", "--conversation", "case-list")).stdout
    )
    assert [e["id"] for e in case["items"]] == [ids[2], ids[0]]
    assert case["next_cursor"] is None

    await run_job(mail_system.scheduler, "email-send")
    sent = json.loads(
        (await jobwire_mail.ok("mail", "list", "--status", "sent", "-o", "json")).stdout
    )
    assert sorted(e["id"] for e in sent["items"]) == sorted(ids)
    none = await jobwire_mail.ok("mail", "list", "--status", "queued")
    assert "no email with these filters" in none.stdout
    bad = await jobwire_mail("mail", "list", "--status", "lost")
    assert bad.exit_code == 2  # typer names the choices


async def test_contacts_searches_the_address_book(
    jobwire_mail: Jobwire, mail_system: MailSystem
) -> None:
    for to in ("Carla Case <carla@example.com>", "Carl Other <carl@example.com>", "d@example.com"):
        await jobwire_mail.ok("mail", "send", "--to", to, "--subject", "Hi", "--text", "t")
    await run_job(mail_system.scheduler, "email-send")
    populated = await run_job(mail_system.scheduler, "address-book-populate")
    assert populated["status"] == "succeeded", populated

    found = json.loads((await jobwire_mail.ok("contacts", "carl", "-o", "json")).stdout)
    assert sorted(c["address"] for c in found) == ["carl@example.com", "carla@example.com"]
    table = await jobwire_mail.ok("contacts", "Carla", role="viewer")
    row = next(line for line in table.stdout.splitlines() if "carla@example.com" in line)
    assert "Carla Case" in row
    assert (
        len(json.loads((await jobwire_mail.ok("contacts", "--limit", "1", "-o", "json")).stdout))
        == 1
    )
    nobody = await jobwire_mail.ok("contacts", "zz")
    assert "no contact starts with 'zz'" in nobody.stdout


async def test_errors_name_the_mailer_url(jobwire_mail: Jobwire, tmp_path: Path) -> None:
    nowhere = "http://127.0.0.1:9"
    down = await jobwire_mail("mail", "list", env={"JOBWIRE_MAILER_URL": nowhere})
    assert down.exit_code == 1
    assert down.stderr.startswith(f"jobwire: cannot reach the mailer API at {nowhere} (")
    assert "Set JOBWIRE_MAILER_URL" in down.stderr
    unset = await jobwire_mail(
        "contacts", env={"JOBWIRE_MAILER_URL": None, "JOBWIRE_DEV_DIR": str(tmp_path / "none")}
    )
    assert unset.exit_code == 1
    assert "no URL for mailer: set JOBWIRE_MAILER_URL" in unset.stderr
    bad_token = await jobwire_mail("mail", "list", env={"JOBWIRE_TOKEN": "jw_" + "x" * 43})
    assert "Unauthorized (401): the token is unknown or revoked" in bad_token.stderr
    assert "the token is from JOBWIRE_TOKEN" in bad_token.stderr


def test_the_mailer_url_and_token_come_from_a_running_jobwire_dev(tmp_path: Path) -> None:
    import os

    me = devfile.Recorded.of(os.getpid())  # this test process plays jobwire dev
    record = devfile.DevFile(
        tmp_path / devfile.FILE_NAME,
        {
            "pid": me.pid,
            "start": me.start,
            "api_url": "http://127.0.0.1:8080",
            "services": {"scheduler": "http://127.0.0.1:8080", "mailer": "http://127.0.0.1:8082"},
            "token": "jw_dev",
        },
    )
    record.save()
    base = {"JOBWIRE_DEV_DIR": str(tmp_path), "JOBWIRE_CONFIG": str(tmp_path / "none.toml")}
    config = load_mailer_config(environ=base)
    assert (config.api_url, config.token) == ("http://127.0.0.1:8082", "jw_dev")
    # Another mailer URL does not get the development token.
    other = load_mailer_config(environ={**base, "JOBWIRE_MAILER_URL": "http://mail.example:80"})
    assert (other.api_url, other.token) == ("http://mail.example:80", None)
