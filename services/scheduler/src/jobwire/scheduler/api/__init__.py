"""The scheduler's admin REST API (``/api/v1``): FastAPI, bearer tokens, problem+json.

``create_app`` builds the application; ``jobwire.scheduler.main`` mounts it on
the service kit's HTTP server. Token administration for tools that talk to the
database directly (the CLI) is in :mod:`jobwire.scheduler.api.tokens`.
"""

from jobwire.scheduler.api.app import create_app
from jobwire.scheduler.api.context import ApiContext

__all__ = ["ApiContext", "create_app"]
