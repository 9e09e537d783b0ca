"""Ask the service that runs a job's type to check its params before they are saved.

Static validation (the type's params model) has passed by the time this runs;
what is left is what only the owning service can know — a search-sync profile's
tables and columns against the live source schema. The question goes over NATS
(:func:`jobwire.runtime.validation.check_live`) with the scheduler's
``live_check_seconds``; a service that is down, slow or unable to check leaves
the definition saved as static validation allowed it (logged at info), so an
outage of a worker never keeps an operator from saving a job.
"""

from __future__ import annotations

from jobwire.runtime.validation import ParamProblem, check_live
from jobwire.scheduler.api.context import ApiContext
from jobwire.scheduler.domain.definitions import DefinitionError, JobDefinition


def needs_live_check(definition: JobDefinition, previous: JobDefinition | None) -> bool:
    """A new job, or an update that changes what is checked: its type or params.
    (A schedule change alone is not worth a round trip to a worker.)"""
    if previous is None:
        return True
    return definition.type != previous.type or definition.params != previous.params


async def live_problems(api: ApiContext, definition: JobDefinition) -> list[ParamProblem]:
    """What the owning service finds wrong with the params; empty when it found
    nothing, could not be asked, or live checks are off."""
    # Until the service has started the broker may not be connected; the save is
    # refused with 503 by the store then anyway.
    if api.live_check_seconds <= 0 or not api.ready():
        return []
    problems = await check_live(
        api.broker, definition.type, definition.params, api.live_check_seconds
    )
    return [_under_params(p) for p in problems or []]


def _under_params(problem: ParamProblem) -> ParamProblem:
    # A worker answers only for the params: a field it names elsewhere (say,
    # `profile.table`, or `name`) is read as inside them.
    if problem.field == "params" or problem.field.startswith("params."):
        return problem
    return ParamProblem(f"params.{problem.field}", problem.message)


async def check_params_live(
    api: ApiContext, definition: JobDefinition, previous: JobDefinition | None = None
) -> None:
    """Raise the API's 422 for invalid params (:class:`DefinitionError`, as static
    validation does), each problem naming its field, when the owner finds any."""
    if not needs_live_check(definition, previous):
        return
    problems = await live_problems(api, definition)
    if problems:
        raise DefinitionError([(p.field, p.message) for p in problems])
