"""Listener jobs reach the listeners service through NATS KV, kept equal to the database."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.listeners import ListenerDefinition
from jobwire.scheduler.domain.definitions import parse_definition
from jobwire.testing import wait_for

pytestmark = pytest.mark.integration

LISTENER = {
    "name": "orders from kafka",
    "type": "kafka-subscriber",
    "group": "intake",
    "replicas": 2,
    "params": {"workflow": "order", "bootstrap_servers": ["k:9092"], "topics": ["orders"]},
}


async def _mirrored(harness: Any) -> dict[str, ListenerDefinition]:
    try:
        kv = await harness.broker.js.key_value(
            ListenerDefinition.bucket(harness.settings.namespace)
        )
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return {}
    found = {}
    for key in keys:
        try:  # deleted since keys() (the running mirror's own pass)
            found[key] = ListenerDefinition.model_validate_json((await kv.get(key)).value)
        except KeyNotFoundError:
            continue
    return found


async def test_enabled_listener_jobs_are_mirrored_and_others_removed(make_scheduler: Any) -> None:
    harness = await make_scheduler()
    store, mirror = harness.store, harness.scheduler.mirror
    now = utcnow()
    job = await store.create(parse_definition(LISTENER), now)
    await store.create(
        parse_definition(
            {
                "name": "not a listener",
                "type": "start-workflow",
                "params": {"workflow": "w"},
                "schedule": {"kind": "cron", "expression": "0 0 * * *"},
            }
        ),
        now,
    )

    assert await mirror.sync() == 1
    [(key, mirrored)] = (await _mirrored(harness)).items()
    assert key == str(job.id)
    assert mirrored.job_name == "orders from kafka"
    assert mirrored.replicas == 2
    assert mirrored.job_type == "kafka-subscriber"
    assert mirrored.params["topics"] == ["orders"]
    assert await mirror.sync() == 0  # nothing changed: nothing written

    changed = parse_definition({**LISTENER, "params": {**LISTENER["params"], "topics": ["o2"]}})
    await store.update(job.name, changed, job.version, now)
    await mirror.sync()
    [mirrored] = (await _mirrored(harness)).values()
    assert mirrored.params["topics"] == ["o2"]
    assert mirrored.job_version == job.version + 1

    for off, on in [
        (
            lambda: store.set_enabled(job.name, False, now),
            lambda: store.set_enabled(job.name, True, now),
        ),
        (
            lambda: store.set_paused(job.name, True, now),
            lambda: store.set_paused(job.name, False, now),
        ),
        (
            lambda: store.set_group_enabled("intake", False, now),
            lambda: store.set_group_enabled("intake", True, now),
        ),
    ]:
        await off()
        await mirror.sync()
        assert await _mirrored(harness) == {}
        await on()
        await mirror.sync()
        assert list(await _mirrored(harness)) == [str(job.id)]

    await store.delete(job.name)
    await mirror.sync()
    assert await _mirrored(harness) == {}


async def test_a_running_scheduler_mirrors_on_change(make_scheduler: Any) -> None:
    harness = await make_scheduler(start=True, listener_sync_seconds=60)
    job = await harness.store.create(parse_definition(LISTENER), utcnow())

    # Sooner than the 60 s periodic pass: the change's NOTIFY woke the mirror (the
    # bound leaves room for a busy machine; 5 s was once missed under load).
    await wait_for(
        lambda: _has(harness, str(job.id)), timeout=20, description="mirrored after NOTIFY"
    )
    await harness.store.delete(job.name)
    await wait_for(lambda: _gone(harness), timeout=20, description="removed after delete")


async def _has(harness: Any, key: str) -> bool:
    return key in await _mirrored(harness)


async def _gone(harness: Any) -> bool:
    return await _mirrored(harness) == {}


async def test_a_listener_whose_stored_definition_breaks_is_faulted_and_the_rest_mirrored(
    make_scheduler: Any,
) -> None:
    harness = await make_scheduler()
    store, mirror = harness.store, harness.scheduler.mirror
    now = utcnow()
    good = await store.create(parse_definition(LISTENER), now)
    broken = await store.create(parse_definition({**LISTENER, "name": "broken"}), now)
    # As if an upgrade tightened a rule: the stored definition no longer parses.
    await store.pool.execute(
        """UPDATE scheduler.jobs SET definition = jsonb_set(definition, '{replicas}', '"many"'),
               version = version + 1 WHERE name = 'broken'"""
    )
    await mirror.sync()
    mirrored = await _mirrored(harness)
    assert str(good.id) in mirrored
    assert str(broken.id) not in mirrored
    fault = await store.pool.fetchval("SELECT fault FROM scheduler.jobs WHERE name = 'broken'")
    assert "stored definition is invalid" in fault
    # Edits to the good one still reach the listeners.
    await store.set_paused(LISTENER["name"], True, now)
    await mirror.sync()
    assert str(good.id) not in await _mirrored(harness)
