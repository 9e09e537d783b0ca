"""``python -m caseapp install|generate|churn|drop``: the sample database from a shell.

The DSN comes from ``--dsn``, else ``CASEAPP_DSN``, else the local PostgreSQL.
Each command prints what it did, one ``name: count`` per line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence

from caseapp.churn import Churn
from caseapp.generate import generate
from caseapp.schema import count_rows, drop, install

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DSN_VARIABLE = "CASEAPP_DSN"


def default_dsn(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(DSN_VARIABLE) or DEFAULT_DSN


def parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dsn",
        default=default_dsn(environ),
        help=f"PostgreSQL DSN (default: ${DSN_VARIABLE}, else {DEFAULT_DSN})",
    )
    root = argparse.ArgumentParser(prog="python -m caseapp", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("install", parents=[common], help="create schema caseapp (idempotent)")
    commands.add_parser("drop", parents=[common], help="drop schema caseapp and its data")
    fill = commands.add_parser("generate", parents=[common], help="add generated cases")
    fill.add_argument("--cases", type=int, required=True)
    fill.add_argument("--tasks-per-case", type=int, default=3)
    fill.add_argument("--comments-per-case", type=int, default=2)
    fill.add_argument("--attachments-per-case", type=int, default=1)
    fill.add_argument("--emails-per-case", type=int, default=1)
    fill.add_argument("--closed-fraction", type=float, default=0.3)
    fill.add_argument("--seed", type=int, default=0)
    fill.add_argument("--batch", type=int, default=5000)
    churn = commands.add_parser("churn", parents=[common], help="write a mix of changes")
    churn.add_argument("--rate", type=float, required=True, help="changes per second")
    churn.add_argument("--seconds", type=float, required=True)
    churn.add_argument("--connections", type=int, default=8)
    churn.add_argument("--seed", type=int, default=0)
    return root


async def _run(arguments: argparse.Namespace) -> dict[str, int]:
    dsn: str = arguments.dsn
    if arguments.command == "install":
        await install(dsn)
        return await count_rows(dsn)
    if arguments.command == "drop":
        await drop(dsn)
        return {}
    if arguments.command == "generate":
        return await generate(
            dsn,
            cases=arguments.cases,
            tasks_per_case=arguments.tasks_per_case,
            comments_per_case=arguments.comments_per_case,
            attachments_per_case=arguments.attachments_per_case,
            emails_per_case=arguments.emails_per_case,
            closed_fraction=arguments.closed_fraction,
            seed=arguments.seed,
            batch=arguments.batch,
        )
    async with await Churn.open(
        dsn, connections=arguments.connections, seed=arguments.seed
    ) as churn:
        changes = await churn.run(arguments.rate, arguments.seconds)
    return dict(Counter(change.kind.value for change in changes))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    try:
        counts = asyncio.run(_run(arguments))
    except ValueError as error:
        print(f"caseapp {arguments.command}: {error}", file=sys.stderr)
        return 2
    for name, count in counts.items():
        print(f"{name}: {count}")
    if arguments.command == "drop":
        print("dropped schema caseapp")
    return 0
