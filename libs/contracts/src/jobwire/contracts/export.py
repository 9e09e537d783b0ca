"""Write (or check) the published JSON Schemas and AsyncAPI document.

    python -m jobwire.contracts.export [--check] [DIR]

DIR defaults to ``libs/contracts/schemas`` in the source tree. The files are
committed so that external developers can read them without Python, and CI
runs ``--check`` so they never drift from the models. Output is
deterministic (sorted keys, no timestamps) so that a diff shows a real change.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobwire.contracts.asyncapi import (
    CHANNELS,
    ENVELOPE_SCHEMA_ID,
    JSON_SCHEMA_DIALECT,
    OBJECT_MODELS,
    document,
    envelope_schema,
)
from jobwire.contracts.envelope import Versioned
from jobwire.contracts.job_types import job_types

JOB_PARAMS_DIR = "job-params"
ASYNCAPI_FILE = "asyncapi.json"

# Only files the exporter could have written count as extra, so that pointing
# it at a directory with other content never reports or deletes that content.
_GENERATED = re.compile(
    rf"^(?:(?:{re.escape(JOB_PARAMS_DIR)}/)?[^/]+\.v\d+\.json|{re.escape(ASYNCAPI_FILE)})$"
)


def default_dir() -> Path:
    """``libs/contracts/schemas`` of the source tree this module is in."""
    # src/jobwire/contracts/export.py -> libs/contracts
    package_root = Path(__file__).resolve().parents[3]
    if not (package_root / "pyproject.toml").is_file():
        raise SystemExit("not running from a source checkout: pass the output DIR")
    return package_root / "schemas"


def render() -> dict[str, str]:
    """Every published file, by path relative to the output directory."""
    documents: dict[str, Any] = {}
    for model in [channel.model for channel in CHANNELS] + list(OBJECT_MODELS):
        documents[_file_name(model)] = _standalone(model)
    for job_type, params in job_types().items():
        documents[f"{JOB_PARAMS_DIR}/{job_type}.v{params.version}.json"] = _standalone(params)
    documents["Envelope.v1.json"] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": ENVELOPE_SCHEMA_ID,
        **envelope_schema(),
    }
    documents[ASYNCAPI_FILE] = document()
    return {path: _dump(doc) for path, doc in sorted(documents.items())}


def check(directory: Path) -> list[str]:
    """What differs between ``directory`` and :func:`render`; empty if nothing."""
    expected = render()
    existing = _generated_files(directory)
    problems = [f"missing: {path}" for path in expected if path not in existing]
    problems += [
        f"differs: {path}"
        for path in expected
        if path in existing and (directory / path).read_text(encoding="utf-8") != expected[path]
    ]
    problems += [f"extra: {path}" for path in sorted(existing - expected.keys())]
    return problems


def write(directory: Path) -> list[str]:
    """Bring ``directory`` up to date; return what was written or removed."""
    expected = render()
    changes = []
    for path, text in expected.items():
        target = directory / path
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            changes.append(f"wrote: {path}")
    for path in sorted(_generated_files(directory) - expected.keys()):
        (directory / path).unlink()
        changes.append(f"removed: {path}")
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobwire.contracts.export",
        description="Write jobwire's JSON Schemas and AsyncAPI document.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming every file that is missing, differs or is extra",
    )
    parser.add_argument(
        "dir", nargs="?", type=Path, help="output directory (default: libs/contracts/schemas)"
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir or default_dir()

    if args.check:
        problems = check(directory)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(
                f"{directory} is out of date: run python -m jobwire.contracts.export",
                file=sys.stderr,
            )
            return 1
        print(f"{directory} is up to date")
        return 0

    for change in write(directory):
        print(change)
    print(f"{directory} is up to date")
    return 0


def _file_name(model: type[Versioned]) -> str:
    return f"{model.__name__}.v{model.version}.json"


def _standalone(model: type[Versioned]) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": model.schema_uri(), **model.model_json_schema()}


def _generated_files(directory: Path) -> set[str]:
    candidates = [*directory.glob("*.json"), *directory.glob(f"{JOB_PARAMS_DIR}/*.json")]
    paths = {path.relative_to(directory).as_posix() for path in candidates if path.is_file()}
    return {path for path in paths if _GENERATED.match(path)}


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
