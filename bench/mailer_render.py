"""build_message + render, CPU ms per email, for the ~5 KB text emails of bench/mailer.py.

No servers: the mailer's own domain functions on ``--emails`` commands
(``make_commands`` of bench/mailer.py, no attachments), built then rendered
as the mailer does without SMTPUTF8. CPU time of this process (the machine
is shared), best of ``--rounds``. Run: ``uv run python bench/mailer_render.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mailer import FROM_ADDRESS, make_commands

from jobwire.contracts.mail import SendEmail
from jobwire.contracts.objects import EmailAddress
from jobwire.mailer.domain.message import build_message, message_id, render

SENDER = EmailAddress(address=FROM_ADDRESS)
DATE = datetime(2026, 1, 1, tzinfo=UTC)


def build(command: SendEmail) -> EmailMessage:
    return build_message(
        command,
        account_from=SENDER,
        message_id=message_id(command.idempotency_key, "example.com"),
        date=DATE,
        references=[],
        attachments=[],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    commands = make_commands(args.emails, 0, "render")
    for command in commands[:50]:  # warm-up: imports, mimetypes, caches
        render(build(command), smtputf8=False)
    best = {"build": float("inf"), "render": float("inf"), "total": float("inf")}
    for _ in range(args.rounds):
        start = time.process_time()
        messages = [build(c) for c in commands]
        built = time.process_time()
        rendered = [render(m, smtputf8=False) for m in messages]
        done = time.process_time()
        for key, seconds in (
            ("build", built - start),
            ("render", done - built),
            ("total", done - start),
        ):
            best[key] = min(best[key], seconds)
    ms = {key: round(seconds * 1000 / args.emails, 3) for key, seconds in best.items()}
    print(f"ms CPU per email (best of {args.rounds}): {ms}; {len(rendered[0])} bytes each")


if __name__ == "__main__":
    main()
