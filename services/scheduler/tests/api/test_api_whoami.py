"""``GET /api/v1/whoami``: what other services (the mailer) ask to check a token."""

from __future__ import annotations

import pytest

from jobwire.scheduler.api.tokens import revoke_token

pytestmark = pytest.mark.integration


async def test_whoami_names_the_token_and_its_role(api) -> None:  # type: ignore[no-untyped-def]
    for role in ("viewer", "operator", "admin"):
        response = await api.clients[role].get("/api/v1/whoami")
        assert response.status_code == 200, response.text
        assert response.json() == {"name": f"{role}-token", "role": role}


async def test_whoami_refuses_no_unknown_and_revoked_tokens(api) -> None:  # type: ignore[no-untyped-def]
    assert (await api.anonymous.get("/api/v1/whoami")).status_code == 401
    assert (await api.client("jw_" + "x" * 43).get("/api/v1/whoami")).status_code == 401
    await revoke_token(api.pool, "operator-token")
    revoked = await api.operator.get("/api/v1/whoami")
    assert revoked.status_code == 401
    assert revoked.headers["www-authenticate"].startswith("Bearer")
