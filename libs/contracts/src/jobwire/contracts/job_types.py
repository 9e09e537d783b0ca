"""Job types and the parameter model of each.

A job's ``params`` are stored and sent as plain JSON (``JobDue.params``); this
registry is where they get a schema. The admin API validates a job definition
with :func:`validate_params` before saving it, and a worker validates again
before running, so a typo is refused with the parameter's name rather than
surfacing as a failed run. Every job type jobwire ships is registered here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import ConfigDict, Field

from jobwire.contracts.envelope import Versioned
from jobwire.contracts.errors import ContractError
from jobwire.contracts.subjects import WorkflowName, token


class JobParams(Versioned):
    """Base of every job type's parameter model.

    Unknown parameters are refused, unlike in messages: a parameter is written
    by a person, and a misspelt one silently ignored would be a job doing the
    wrong thing.
    """

    model_config = ConfigDict(extra="forbid")

    job_type: ClassVar[str]


ParamsT = TypeVar("ParamsT", bound=type[JobParams])

_registry: dict[str, type[JobParams]] = {}


def job_params(job_type: str) -> Callable[[ParamsT], ParamsT]:
    """Class decorator registering a parameter model for ``job_type``."""
    token(job_type, "job type")

    def register(model: ParamsT) -> ParamsT:
        if job_type in _registry:
            raise ValueError(
                f"job type {job_type!r} is already registered to {_registry[job_type].__name__}"
            )
        model.job_type = job_type
        _registry[job_type] = model
        return model

    return register


def job_types() -> dict[str, type[JobParams]]:
    """Every registered job type and its parameter model, sorted by name."""
    return dict(sorted(_registry.items()))


def params_model(job_type: str) -> type[JobParams]:
    """The parameter model of ``job_type``; :class:`ContractError` if unknown."""
    try:
        return _registry[job_type]
    except KeyError:
        known = ", ".join(sorted(_registry))
        raise ContractError(
            "type", f"unknown job type {job_type!r}; known types: {known}"
        ) from None


def validate_params(job_type: str, params: Mapping[str, Any]) -> JobParams:
    """Validate a job's ``params`` against its type's model.

    Raises :class:`ContractError` (field ``type``) for an unknown type, and
    ``pydantic.ValidationError`` for bad parameters, its locations starting at
    the parameter's name.
    """
    return params_model(job_type).model_validate(dict(params))


@job_params("start-workflow")
class StartWorkflowParams(JobParams):
    """Parameters of a `start-workflow` job: on each run, start one workflow instance."""

    workflow: WorkflowName = Field(description="Name of the workflow to start.")
    input: dict[str, Any] = Field(
        default_factory=dict, description="Input handed to every instance started."
    )
    correlation_id: str | None = Field(
        default=None, description="Correlation key put on every StartWorkflow sent."
    )
