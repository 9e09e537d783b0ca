"""How many listener slots one instance should hold. No I/O.

Every instance computes the same fair share from the same facts (the
listeners' replica counts and how many listener instances are alive), takes
free slots up to it and gives up slots above it, so load spreads without a
coordinator and a joining instance gets its part. Which instance wins a free
slot is decided by the lease (compare-and-set), not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def fair_share(replicas: Mapping[str, int], instances: int) -> tuple[dict[str, int], int]:
    """(per listener, in total): the most slots one of ``instances`` should hold."""
    instances = max(instances, 1)
    per_listener = {job: math.ceil(count / instances) for job, count in replicas.items()}
    total = math.ceil(sum(replicas.values()) / instances)
    return per_listener, total


def to_shed(
    replicas: Mapping[str, int], held: Mapping[str, set[int]], instances: int
) -> tuple[str, int] | None:
    """One slot to give up because this instance holds more than its share, if any.

    One per round: the others need a round to take it before the share is
    measured again.
    """
    per_listener, total = fair_share(replicas, instances)
    for job in sorted(held):
        if len(held[job]) > per_listener.get(job, 0):
            return job, max(held[job])
    if sum(len(slots) for slots in held.values()) > total:
        job = max(held, key=lambda j: (len(held[j]), j))
        if held[job]:
            return job, max(held[job])
    return None
