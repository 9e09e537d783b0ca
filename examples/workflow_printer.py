"""A stand-in for a workflow engine: print every StartWorkflow jobwire sends.

It is what an external app does, with nothing of jobwire's code: a NATS client,
a durable JetStream consumer on ``jobwire.workflows.start.>``, and JSON. Each
message is a CloudEvent (structured mode); ``data`` is the StartWorkflow
command described in ``libs/contracts/schemas/StartWorkflow.v1.json``.
A real engine would start one workflow instance per ``idempotency_key``.

One workflow it also answers, as a workflow engine would: ``send-sample-mail``
(started every minute by the sample job of ``jobwire dev``) asks the mailer for
an email by publishing a SendEmail command (``SendEmail.v1.json``) on
``jobwire.mail.send.default``, keyed by the workflow's own idempotency key, so
a redelivered start never sends a second email.

    python examples/workflow_printer.py [--url nats://127.0.0.1:4222] [--namespace jobwire]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal

import nats
import nats.js.errors


async def send_sample_mail(js, namespace: str, command: dict, at: str) -> None:  # type: ignore[no-untyped-def]
    key = f"sample-mail:{command['idempotency_key']}"
    event = {
        "specversion": "1.0",
        "id": key,
        "source": "examples/workflow_printer",
        "type": "io.jobwire.mail.send.v1",
        "time": at,
        "datacontenttype": "application/json",
        "data": {
            "idempotency_key": key,
            "account": "default",
            "to": [{"address": (command.get("input") or {}).get("to", "alice@example.com")}],
            "subject": f"Hello from jobwire — {at}",
            "text": "This email was asked for by the example app when the job "
            "`sample-mail` started `send-sample-mail`.\n",
            "conversation_id": "sample",
            "tags": ["sample"],
        },
    }
    await js.publish(
        f"{namespace}.mail.send.default",
        json.dumps(event).encode(),
        headers={"Nats-Msg-Id": key, "Content-Type": "application/cloudevents+json"},
    )
    print(f"workflow-printer: asked the mailer for an email ({key})", flush=True)


async def main(url: str, namespace: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    # A durable consumer: after a restart the printer resumes where it stopped.
    # The stream appears when the first jobwire service starts: wait for it.
    while True:
        try:
            psub = await js.pull_subscribe(
                f"{namespace}.workflows.start.>",
                durable="example-workflow-printer",
                stream=f"{namespace.upper()}_WORKFLOWS",
            )
            break
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.5)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"workflow-printer: listening on {namespace}.workflows.start.> at {url}", flush=True)
    while not stop.is_set():
        try:
            messages = await psub.fetch(100, timeout=1)
        except TimeoutError:
            continue
        for msg in messages:
            event = json.loads(msg.data)
            command = event["data"]
            print(
                f"workflow-printer: start {command['workflow']!r} "
                f"input={json.dumps(command.get('input'))} "
                f"key={command['idempotency_key']} at {event['time']}",
                flush=True,
            )
            if command["workflow"] == "send-sample-mail":
                await send_sample_mail(js, namespace, command, event["time"])
            await msg.ack()  # after handling: a crash before this redelivers it
    with contextlib.suppress(Exception):
        await psub.unsubscribe()
    await nc.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("JOBWIRE_NATS__URL", "nats://127.0.0.1:4222")
    )
    parser.add_argument("--namespace", default=os.environ.get("JOBWIRE_NAMESPACE", "jobwire"))
    args = parser.parse_args()
    asyncio.run(main(args.url, args.namespace))
