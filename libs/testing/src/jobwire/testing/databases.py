"""Throw-away PostgreSQL databases, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import asyncpg


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at ``database`` instead."""
    return urlsplit(dsn)._replace(path="/" + quote(database, safe="")).geturl()


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str, prefix: str = "t_") -> AsyncIterator[str]:
    """A fresh, empty database on the server of ``server_dsn``; dropped on exit."""
    name = f"{prefix}{secrets.token_hex(5)}"
    connection = await asyncpg.connect(server_dsn)
    try:
        # template0: nobody ever connects to it, unlike template1, so concurrent
        # CREATE DATABASE runs (other sessions on a shared server) cannot collide.
        await connection.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0")
    finally:
        await connection.close()
    try:
        yield with_database(server_dsn, name)
    finally:
        connection = await asyncpg.connect(server_dsn)
        try:
            # FORCE ends connections left open (e.g. after a failure).
            await connection.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        finally:
            await connection.close()
