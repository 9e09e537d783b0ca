"""The Jobs Management web page: static files that talk to the admin API.

Nothing here renders data. ``/`` serves ``index.html``; ``/static/`` serves its
script, style sheet and icon, as they are (no build step). The page signs in
with an API token (kept in the tab's ``sessionStorage``) and reads and acts
through ``/api/v1`` like any other client, so it can as well be served by any
web server in front of the API. Every response carries a Content-Security-Policy
that allows only this origin: no inline script or style, nothing from elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate every time (ETag / Last-Modified): an upgraded scheduler's page
    # is never mixed with a cached script of the previous version.
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    def file_response(
        self,
        full_path: os.PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


async def _index(_: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


def web_routes() -> list[BaseRoute]:
    """``/`` (the page) and ``/static/…`` (its files). Put them before the API's
    catch-all mount."""
    return [
        Route("/", _index, methods=["GET", "HEAD"], name="jobs-page"),
        Mount("/static", app=_StaticFiles(directory=STATIC), name="static"),
    ]
