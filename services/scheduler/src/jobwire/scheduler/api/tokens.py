"""API tokens: created, listed and revoked here, by the API and by ``jobwire tokens``.

A token is ``jw_`` + 43 random URL-safe characters (256 bits). Only its SHA-256
is stored; the token itself is returned once, by :func:`create_token`, and
appears nowhere else — not in the database, the audit log, or any log line.
A plain hash (no salt, no slow KDF) is enough because the secret is random and
long: there is nothing to guess from a dictionary.

The CLI calls these functions directly against the database, which is how the
first admin token comes to exist (``jobwire tokens create NAME --role admin``).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import asyncpg

from jobwire.contracts.envelope import utcnow

TOKEN_PREFIX = "jw_"  # noqa: S105 (a prefix, not a secret)
DEFAULT_SCHEMA = "scheduler"
# last_used_at is written at most this often per token: a hot token would
# otherwise cost a write on every request.
LAST_USED_PRECISION = timedelta(minutes=1)
_NAME_MAX = 200


class Role(StrEnum):
    """viewer < operator < admin; each role may do what the ones below it may."""

    VIEWER = "viewer"  # every GET
    OPERATOR = "operator"  # + actions: enable/disable, pause/resume, trigger, cancel, backfill
    ADMIN = "admin"  # + create/update/delete jobs, tokens, the audit log

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as anyone may see it: everything but the secret."""

    id: uuid.UUID
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenError(ValueError):
    """A token operation was refused; ``field`` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TokenExists(TokenError):
    pass


class TokenNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no active token named {name!r}")
        self.name = name


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _info(row: asyncpg.Record) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def _check_name(name: str) -> str:
    if not name or len(name) > _NAME_MAX or not name.isprintable() or name != name.strip():
        raise TokenError(
            "name", f"must be 1 to {_NAME_MAX} printable characters without surrounding spaces"
        )
    return name


def _check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise TokenError("role", "must be one of viewer, operator, admin") from None


_COLUMNS = "id, name, role, created_at, last_used_at, revoked_at"


async def create_token(
    pool: asyncpg.Pool, name: str, role: str, *, actor: str = "cli", schema: str = DEFAULT_SCHEMA
) -> str:
    """Create a token and return it: the only time it can be seen.

    Raises :class:`TokenError` for a bad name or role, or a name an active
    token has already.
    """
    _check_name(name)
    checked = _check_role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                f"""INSERT INTO {schema}.api_tokens (id, name, role, token_hash)
                    VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}""",
                uuid.uuid4(),
                name,
                checked.value,
                hash_token(token),
            )
        except asyncpg.UniqueViolationError:
            raise TokenExists("name", f"an active token named {name!r} exists already") from None
        assert row is not None
        await _audit(conn, schema, actor, "token.create", name, None, {"role": checked.value})
    return token


async def list_tokens(
    pool: asyncpg.Pool, *, include_revoked: bool = True, schema: str = DEFAULT_SCHEMA
) -> list[TokenInfo]:
    rows = await pool.fetch(
        f"""SELECT {_COLUMNS} FROM {schema}.api_tokens
            WHERE $1 OR revoked_at IS NULL ORDER BY name, created_at""",
        include_revoked,
    )
    return [_info(r) for r in rows]


async def revoke_token(
    pool: asyncpg.Pool, name: str, *, actor: str = "cli", schema: str = DEFAULT_SCHEMA
) -> TokenInfo:
    """Revoke the active token named ``name``; it stops working at once."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE {schema}.api_tokens SET revoked_at = $2
                WHERE name = $1 AND revoked_at IS NULL RETURNING {_COLUMNS}""",
            name,
            utcnow(),
        )
        if row is None:
            raise TokenNotFound(name)
        await _audit(
            conn, schema, actor, "token.revoke", name, {"role": row["role"]}, {"revoked": True}
        )
    return _info(row)


async def authenticate(
    pool: asyncpg.Pool, token: str, *, schema: str = DEFAULT_SCHEMA
) -> TokenInfo | None:
    """The active token ``token`` is, or None (unknown, malformed or revoked)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM {schema}.api_tokens WHERE token_hash = $1", hash_token(token)
    )
    if row is None or row["revoked_at"] is not None:
        return None
    now = utcnow()
    last = row["last_used_at"]
    if last is None or now - last >= LAST_USED_PRECISION:
        await pool.execute(
            f"UPDATE {schema}.api_tokens SET last_used_at = $2 WHERE id = $1", row["id"], now
        )
    return _info(row)


async def ensure_schema(pool: asyncpg.Pool) -> None:
    """Apply the scheduler's migrations (idempotent), for tools that reach the
    database before any scheduler has started, like ``jobwire tokens create``."""
    from jobwire.runtime.db import load_migrations, migrate
    from jobwire.scheduler.main import spec

    assert spec.migrations is not None
    await migrate(pool, spec.schema or spec.name, load_migrations(spec.migrations))


async def _audit(
    conn: asyncpg.Connection,
    schema: str,
    actor: str,
    action: str,
    name: str,
    before: dict[str, object] | None,
    after: dict[str, object] | None,
) -> None:
    await conn.execute(
        f"""INSERT INTO {schema}.audit_log (actor, action, target_type, target, before, after)
            VALUES ($1, $2, 'token', $3, $4, $5)""",
        actor,
        action,
        name,
        before,
        after,
    )
