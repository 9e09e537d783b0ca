"""From captured changes to the documents they touch, and where the next run starts.

Every capture records the values that lead to a document: the root's key for
the root table, a view's source tables and the children (whose foreign key
holds the root's key), and the lookup's own key for a lookup table, which the
source then maps to the documents that show it.

The watermark: a run reads the changes of transactions from the watermark
``since`` on, in transaction order, up to ``limit`` of them, inside a snapshot
whose fence is ``fence`` (every transaction below it has ended and its changes
are visible). When the run took every change it could see, everything below
the fence is done. When the limit cut the list, the last transaction's
changes may be cut too, so only the transactions before it are done. Changes
at or above the fence that were visible are applied now and read again by the
next run — which finds the same version and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from jobwire.search_sync.domain.plan import Plan

ROOT = -1  # target of a capture that gives the root's key


class CapturedChange(Protocol):
    @property
    def xid(self) -> int: ...

    @property
    def relation(self) -> str: ...

    @property
    def keys(self) -> str | None: ...


@dataclass(slots=True)
class Touched:
    """What a batch of changes asks for."""

    roots: dict[str, None] = field(default_factory=dict)  # root keys, in first-seen order
    lookups: dict[int, dict[str, None]] = field(default_factory=dict)  # lookup index → its keys
    truncated: list[str] = field(default_factory=list)  # relations whose table was truncated
    orphans: int = 0  # changes whose key holds NULL: a row with no document to go into


def targets(plan: Plan) -> dict[str, list[int]]:
    """Each captured relation → where its keys lead: ROOT, or the index of a lookup."""
    found: dict[str, list[int]] = {}
    lookup_relations = {
        f"{lk.table.qualified}({','.join(c.name for c in lk.key)})": i
        for i, lk in enumerate(plan.lookups)
    }
    for capture in plan.captures:
        where = found.setdefault(capture.relation, [])
        target = lookup_relations.get(capture.relation, ROOT)
        if target not in where:
            where.append(target)
    return found


def touched(plan: Plan, changes: Sequence[CapturedChange]) -> Touched:
    leads = targets(plan)
    out = Touched()
    for change in changes:
        if change.keys is None:
            if change.relation not in out.truncated:
                out.truncated.append(change.relation)
            continue
        if None in json.loads(change.keys):
            out.orphans += 1
            continue
        for target in leads.get(change.relation, ()):
            if target == ROOT:
                out.roots[change.keys] = None
            else:
                out.lookups.setdefault(target, {})[change.keys] = None
    return out


def next_watermark(since: int, fence: int, xids: list[int], limit: int) -> int:
    """Where the next run starts, after applying the changes of ``xids`` (in order)."""
    if len(xids) < limit:
        return max(since, fence)
    first, last = xids[0], xids[-1]
    if first == last:
        # One transaction filled the batch; the source reads all of its changes then.
        return max(since, min(fence, last + 1))
    return max(since, min(fence, last))


def chunks(keys: list[str], size: int) -> list[list[str]]:
    return [keys[i : i + size] for i in range(0, len(keys), size)]
