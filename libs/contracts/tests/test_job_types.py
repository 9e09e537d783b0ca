from typing import Any

import pytest
from pydantic import ValidationError

from jobwire.contracts import (
    ContractError,
    JobParams,
    StartWorkflowParams,
    job_params,
    job_types,
    params_model,
    validate_params,
)


def test_start_workflow_is_registered() -> None:
    assert job_types()["start-workflow"] is StartWorkflowParams
    assert StartWorkflowParams.job_type == "start-workflow"
    assert params_model("start-workflow") is StartWorkflowParams


def test_validate_params_returns_the_typed_model() -> None:
    params = validate_params(
        "start-workflow", {"workflow": "order-approval", "input": {"region": "eu"}}
    )

    assert params == StartWorkflowParams(workflow="order-approval", input={"region": "eu"})
    assert params.correlation_id is None


def test_unknown_job_type_names_the_type_field_and_the_known_types() -> None:
    with pytest.raises(ContractError) as excinfo:
        validate_params("start-wrokflow", {})

    assert excinfo.value.field == "type"
    assert "unknown job type 'start-wrokflow'" in excinfo.value.message
    assert "start-workflow" in excinfo.value.message
    assert str(excinfo.value).startswith("type: ")
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize(
    ("params", "loc", "text"),
    [
        ({}, ("workflow",), "Field required"),
        ({"workflow": "a.b"}, ("workflow",), "workflow name 'a.b'"),
        ({"workflow": "w", "workflwo": "w"}, ("workflwo",), "Extra inputs are not permitted"),
        ({"workflow": "w", "input": [1]}, ("input",), "valid dictionary"),
    ],
)
def test_bad_params_are_refused_with_their_name(
    params: dict[str, Any], loc: tuple[str, ...], text: str
) -> None:
    with pytest.raises(ValidationError) as excinfo:
        validate_params("start-workflow", params)

    errors = excinfo.value.errors()
    assert [error["loc"] for error in errors] == [loc]
    assert loc[0] in str(excinfo.value)
    assert text in str(excinfo.value)


def test_a_job_type_registers_once() -> None:
    with pytest.raises(ValueError, match="already registered to StartWorkflowParams"):

        @job_params("start-workflow")
        class Again(JobParams):
            pass


def test_a_job_type_must_be_a_subject_token() -> None:
    with pytest.raises(ValueError, match=r"job type 'a\.b'"):
        job_params("a.b")
