"""Export the admin API's OpenAPI document: ``python -m jobwire.scheduler.api.openapi``.

``--check`` fails (exit 1) when the committed file differs from a fresh export.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from jobwire.runtime.broker import Broker
from jobwire.runtime.settings import ServiceSettings
from jobwire.scheduler.api.app import create_app
from jobwire.scheduler.api.context import ApiContext

DEFAULT_PATH = Path(__file__).resolve().parents[4] / "openapi.json"


def document() -> dict[str, Any]:
    """The OpenAPI document; building it touches no server."""
    settings = ServiceSettings()
    api = ApiContext(
        pool=lambda: None,
        broker=Broker(settings, source="/jobwire/scheduler/openapi"),
        stopping=asyncio.Event(),
        namespace=settings.namespace,
    )
    spec: dict[str, Any] = create_app(api).openapi()
    spec["info"]["version"] = "v1"  # the API's version, not the package's: stable in git
    return spec


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="fail if --out is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run `make openapi` and commit the result", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
