"""Which listener slots this instance runs, kept in line with definitions and leases.

Every ``poll_seconds`` the supervisor reads the listener definitions the
scheduler mirrors into ``<ns>_listeners``, renews the leases it holds, stops
what was disabled, deleted or lost, restarts what was edited (RecyclePending
until the running batch is acked), gives up slots above its fair share and
takes free ones up to it. Its status goes to the host registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from pydantic import ValidationError

from jobwire.contracts.envelope import utcnow
from jobwire.contracts.job_types import params_model
from jobwire.contracts.listeners import ListenerDefinition, ListenerParams, ListenerSlotStatus
from jobwire.listeners.domain.placement import fair_share, to_shed
from jobwire.listeners.leases import Leases, lease_key
from jobwire.listeners.runner import SlotRunner, describe
from jobwire.listeners.settings import ListenerOptions
from jobwire.listeners.sources import SourceContext, SourceFactory
from jobwire.runtime.broker import Broker
from jobwire.runtime.hosts import live_hosts
from jobwire.runtime.logs import get_logger
from jobwire.runtime.secrets import Secrets
from jobwire.runtime.waits import wait_any

log = get_logger("jobwire.listeners")

SERVICE = "listeners"
# The scheduler's API accepts at most this many replicas (JobDefinition.replicas),
# and more than one only for scalable types; the bucket itself holds any number.
MAX_REPLICAS = 64


@dataclass
class HeldSlot:
    """A slot whose lease this instance holds, and the runner working it."""

    definition: ListenerDefinition
    slot: int
    revision: int
    renewed_at: float  # monotonic time of the last successful create/renew
    runner: SlotRunner
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return lease_key(self.definition.job_id, self.slot)


class Supervisor:
    def __init__(
        self,
        broker: Broker,
        options: ListenerOptions,
        secrets: Secrets,
        *,
        instance_id: str,
        factories: Callable[[str], SourceFactory],
        status: dict[str, Any],
    ) -> None:
        self.broker = broker
        self.options = options
        self.secrets = secrets
        self.instance_id = instance_id
        self._factories = factories
        self._status = status
        self.leases = Leases(
            broker.js, broker.subjects.namespace, instance_id, options.lease_ttl_seconds
        )
        self.held: dict[str, HeldSlot] = {}
        self.definitions: dict[str, ListenerDefinition] = {}
        # job id → (version, why): a definition version this instance cannot run.
        self._invalid: dict[str, tuple[int, str]] = {}
        # KV key → (why, since when): entries that are no ListenerDefinition at all.
        self._unreadable: dict[str, tuple[str, datetime]] = {}
        self._suspended_since: dict[str, datetime] = {}
        self._missing: set[str] = set()  # held jobs the last listing did not show

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.reconcile()
                except Exception as exc:  # NATS outage: keep running slots, try again
                    log.warning("listeners.reconcile_failed", error=describe(exc))
                self._expire_unrenewed()
                self._publish_status()
                await wait_any(self.options.poll_seconds, stop)
        finally:
            await self.stop_all()

    async def reconcile(self) -> None:
        listed = await self._read_definitions()
        held_jobs = {h.definition.job_id: h.definition for h in self.held.values()}
        # A listing can come back short while NATS is busy (nats-py lists keys
        # through a watcher): a held listener is stopped only when it is
        # missing from two listings in a row.
        missing = set(held_jobs) - set(listed)
        for job_id in missing - self._missing:
            listed[job_id] = held_jobs[job_id]
        self._missing = missing
        self.definitions = listed
        for held in list(self.held.values()):
            if held.stop.is_set():  # stopped while NATS was unreachable
                await self._stop(held, release=True, why="lease unrenewed")
        await self._renew()
        for held in list(self.held.values()):
            wanted = self.definitions.get(held.definition.job_id)
            if wanted is None or held.slot >= wanted.replicas:
                await self._stop(held, release=True, why="removed")
            elif wanted.job_version != held.definition.job_version:
                await self._restart(held, wanted)
        await self._balance()

    async def _read_definitions(self) -> dict[str, ListenerDefinition]:
        try:
            kv = await self.broker.js.key_value(
                ListenerDefinition.bucket(self.broker.subjects.namespace)
            )
            keys = await kv.keys()
        except (BucketNotFoundError, NoKeysError):
            self._unreadable = {}
            return {}
        found: dict[str, ListenerDefinition] = {}
        unreadable: dict[str, tuple[str, datetime]] = {}
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            if not entry.value:
                continue
            try:
                definition = ListenerDefinition.model_validate_json(entry.value)
            except ValidationError as exc:  # one bad entry must not stop the others
                error = describe(exc)
                previous = self._unreadable.get(key)
                if previous is not None and previous[0] == error:
                    unreadable[key] = previous
                else:  # once per entry and reason, not on every poll: the status shows it
                    unreadable[key] = (error, utcnow())
                    log.error("listeners.definition_unreadable", key=key, error=error)
                continue
            found[definition.job_id] = definition
        self._unreadable = unreadable
        return found

    async def _renew(self) -> None:
        for held in list(self.held.values()):
            revision = await self.leases.renew(held.key, held.revision)
            if revision is None:
                log.warning("listeners.lease_lost", job=held.definition.job_name, slot=held.slot)
                await self._stop(held, release=False, why="lease lost")
                continue
            held.revision, held.renewed_at = revision, time.monotonic()

    def _expire_unrenewed(self) -> None:
        """Stop slots whose lease may have expired while NATS was unreachable:
        another instance may hold it by now."""
        deadline = time.monotonic() - self.options.lease_ttl_seconds + self.options.poll_seconds
        for held in list(self.held.values()):
            if held.renewed_at < deadline and not held.stop.is_set():
                log.warning(
                    "listeners.lease_unrenewed", job=held.definition.job_name, slot=held.slot
                )
                held.stop.set()

    async def _balance(self) -> None:
        hosts = await live_hosts(self.broker.js, self.broker.subjects.namespace)
        instances = max(1, sum(h.service == SERVICE for h in hosts))
        replicas = {
            job: d.replicas for job, d in self.definitions.items() if not self._cannot_run(d)
        }
        mine: dict[str, set[int]] = {}
        for held in self.held.values():
            mine.setdefault(held.definition.job_id, set()).add(held.slot)
        shed = to_shed(replicas, mine, instances)
        if shed is not None:
            held = self.held[lease_key(*shed)]
            await self._stop(held, release=True, why="rebalance")
            return
        per_listener, total = fair_share(replicas, instances)
        count = len(self.held)
        for job in sorted(replicas):
            definition = self.definitions[job]
            for slot in range(definition.replicas):
                if count >= total or len(mine.get(job, ())) >= per_listener[job]:
                    break
                if slot in mine.get(job, ()):
                    continue
                revision = await self.leases.acquire(lease_key(job, slot))
                if revision is None:
                    continue
                if self._start(definition, slot, revision):
                    mine.setdefault(job, set()).add(slot)
                    count += 1
                else:
                    await self.leases.release(lease_key(job, slot), revision)
                    break  # what one slot cannot run, none can

    def _start(self, definition: ListenerDefinition, slot: int, revision: int) -> bool:
        try:
            params = params_model(definition.job_type).model_validate(definition.params)
            if not isinstance(params, ListenerParams):  # not an assert: -O drops those
                raise ValueError(f"job_type: {definition.job_type} is not a listener type")
            _check_replicas(definition, params)
            factory = self._factories(definition.job_type)
        except (ValidationError, KeyError, AssertionError, ValueError, ImportError) as exc:
            # The API validated it; a newer scheduler than this listener can write
            # what this one cannot run. Leave the slot to an instance that can.
            self._invalid[definition.job_id] = (definition.job_version, describe(exc))
            log.error("listeners.definition_invalid", job=definition.job_name, error=describe(exc))
            return False
        context = SourceContext(
            definition=definition,
            slot=slot,
            secrets=self.secrets,
            nc=self.broker.nc,
            js=self.broker.js,
            namespace=self.broker.subjects.namespace,
        )
        runner = SlotRunner(
            definition, params, slot, factory(params, context), self.broker, self.options
        )
        held = HeldSlot(definition, slot, revision, time.monotonic(), runner)
        held.task = asyncio.create_task(runner.run(held.stop), name=f"listener-{held.key}")
        self.held[held.key] = held
        log.info("listeners.slot_taken", job=definition.job_name, slot=slot)
        return True

    async def _restart(self, held: HeldSlot, wanted: ListenerDefinition) -> None:
        held.runner.stats.enter("RecyclePending")
        self._publish_status()
        await self._stop(held, release=False, why="definition changed")
        if not self._start(wanted, held.slot, held.revision):
            await self.leases.release(held.key, held.revision)

    async def _stop(self, held: HeldSlot, *, release: bool, why: str) -> None:
        held.stop.set()
        if held.task is not None:
            # A runner finishes its batch first; a source call that hangs (an SDK
            # waiting on a dead peer) must not keep the slot, or shutdown, forever.
            limit = self.options.publish_timeout_seconds + self.options.open_timeout_seconds
            done, _ = await asyncio.wait({held.task}, timeout=limit)
            if not done:
                log.warning("listeners.slot_stop_forced", job=held.definition.job_name)
                held.task.cancel()
            await asyncio.gather(held.task, return_exceptions=True)
        self.held.pop(held.key, None)
        if release:
            with contextlib.suppress(Exception):  # expiry frees it anyway
                await self.leases.release(held.key, held.revision)
        log.info("listeners.slot_left", job=held.definition.job_name, slot=held.slot, why=why)

    async def stop_all(self) -> None:
        for held in self.held.values():
            held.stop.set()  # all runners finish their batch at once, not one by one
        for held in list(self.held.values()):
            await self._stop(held, release=True, why="shutdown")
        self._publish_status()

    def _cannot_run(self, definition: ListenerDefinition) -> str | None:
        invalid = self._invalid.get(definition.job_id)
        return invalid[1] if invalid and invalid[0] == definition.job_version else None

    def statuses(self) -> list[ListenerSlotStatus]:
        found = [held.runner.status() for held in self.held.values()]
        running = {status.job_id for status in found}
        for job in set(self._suspended_since) - set(self.definitions) | running:
            self._suspended_since.pop(job, None)
        for job, definition in self.definitions.items():
            if job in running:
                continue
            error = self._cannot_run(definition)
            found.append(
                ListenerSlotStatus(
                    job_id=job,
                    job_name=definition.job_name,
                    job_version=definition.job_version,
                    slot=None,
                    state="Failed" if error else "Suspended",
                    since=self._suspended_since.setdefault(job, utcnow()),
                    received=0,
                    published=0,
                    dead_lettered=0,
                    errors=0,
                    last_error=error,
                )
            )
        # An entry that is no definition is reported under its key: whoever wrote
        # it can find and fix it, and it is not mistaken for a listener on standby.
        for key, (error, since) in self._unreadable.items():
            found.append(
                ListenerSlotStatus(
                    job_id=key,
                    job_name=key,
                    job_version=0,
                    slot=None,
                    state="Failed",
                    since=since,
                    received=0,
                    published=0,
                    dead_lettered=0,
                    errors=0,
                    last_error=f"unreadable definition: {error}",
                )
            )
        return sorted(found, key=lambda s: (s.job_name, s.slot if s.slot is not None else -1))

    def _publish_status(self) -> None:
        self._status["listeners"] = [s.model_dump(mode="json") for s in self.statuses()]


def _check_replicas(definition: ListenerDefinition, params: ListenerParams) -> None:
    """Refuse replicas the API would have refused: a million slots of a listener
    would otherwise mean a million runners on this instance."""
    if definition.replicas > MAX_REPLICAS:
        raise ValueError(f"replicas: {definition.replicas} is more than {MAX_REPLICAS}")
    if definition.replicas > 1 and not params.scalable:
        raise ValueError(
            f"replicas: {definition.job_type} cannot share its work, {definition.replicas} "
            "replicas would each handle every trigger"
        )
