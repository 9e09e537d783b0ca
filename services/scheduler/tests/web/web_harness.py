"""What the web page tests share: the served scheduler (see conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import httpx

from jobwire.scheduler.api.tokens import create_token


@dataclass
class Served:
    url: str
    pool: asyncpg.Pool

    async def token(self, name: str, role: str) -> str:
        return await create_token(self.pool, name, role)

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client over the same real HTTP the page uses (with a token: of the API)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers)
