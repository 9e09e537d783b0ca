"""A tiny service built on the kit, run as a real process by test_service.py.

It serves job type ``sleep``: announces the run, sleeps ``params.seconds``,
then reports it finished — enough to observe a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import sys

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.runs import RunFinished, RunStarted
from jobwire.contracts.subjects import RunEvent, Stream
from jobwire.runtime.broker import Delivery
from jobwire.runtime.service import ServiceContext, ServiceSpec, serve


async def main(ctx: ServiceContext) -> None:
    subjects = ctx.broker.subjects

    async def handle(delivery: Delivery[JobDue]) -> None:
        due = delivery.data
        await ctx.broker.publish(
            subjects.run_event(due.run_id, RunEvent.STARTED),
            RunStarted(
                run_id=due.run_id,
                job_id=due.job_id,
                job_name=due.job_name,
                job_type=due.job_type,
                attempt=due.attempt,
                host=ctx.settings.host,
                instance_id=ctx.settings.instance_id,
                started_at=utcnow(),
            ),
            msg_id=f"{due.run_id}:started:{delivery.attempt}",
        )
        await asyncio.sleep(float(due.params["seconds"]))
        await ctx.broker.publish(
            subjects.run_event(due.run_id, RunEvent.FINISHED),
            RunFinished(
                run_id=due.run_id,
                job_id=due.job_id,
                job_type=due.job_type,
                attempt=due.attempt,
                status="succeeded",
                finished_at=utcnow(),
            ),
            msg_id=f"{due.run_id}:finished",
        )

    await ctx.broker.consume(
        stream=Stream.JOBS,
        durable="sleep-worker",
        filter_subject=subjects.job_due("sleep"),
        model=JobDue,
        handler=handle,
        stop=ctx.stopping,
        batch=1,
    )


spec = ServiceSpec(name="sleeper", main=main)

if __name__ == "__main__":
    sys.exit(serve(spec))
