"""The committed OpenAPI document is the one the code produces."""

from __future__ import annotations

from pathlib import Path

from jobwire.scheduler.api.openapi import DEFAULT_PATH, main, render

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.json"


def test_the_committed_openapi_document_is_current() -> None:
    assert DEFAULT_PATH == COMMITTED
    assert COMMITTED.read_text(encoding="utf-8") == render(), (
        "services/scheduler/openapi.json is stale: run `make openapi` and commit it"
    )


def test_the_check_fails_on_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text("{}\n", encoding="utf-8")
    assert main(["--out", str(stale), "--check"]) == 1
    assert main(["--out", str(stale)]) == 0
    assert main(["--out", str(stale), "--check"]) == 0


def test_every_operation_documents_its_problems() -> None:
    import json

    document = json.loads(COMMITTED.read_text(encoding="utf-8"))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/api/v1/health":
                assert "security" not in operation
                continue
            assert operation["security"] == [{"HTTPBearer": []}], (method, path)
            problem = operation["responses"]["401"]["content"]["application/problem+json"]
            assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
