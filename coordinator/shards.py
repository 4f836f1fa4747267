"""Which shard a workflow lives on, and which executor leases which shard."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence


def shard_for(workflow_id: str, shard_count: int) -> int:
    """A stable hash: every task of the workflow goes to this shard, forever."""
    return zlib.crc32(workflow_id.encode()) % shard_count


def balance(current: Mapping[int, str], members: Sequence[str], shard_count: int) -> dict[int, str]:
    """Spread ``shard_count`` shards over ``members`` evenly, moving as few as possible.

    Shards stay with their holder while it is a member and not above its fair
    share (``ceil(shards / members)``, or the floor once enough holders have the
    ceiling); the rest go to the least-loaded members, lowest id first, so the
    result depends only on the inputs.
    """
    if not members:
        return {}
    ordered = sorted(members)
    base, extra = divmod(shard_count, len(ordered))
    # The first `extra` members (by current load, then id) may keep base + 1 shards.
    held: dict[str, list[int]] = {member: [] for member in ordered}
    for shard in range(shard_count):
        holder = current.get(shard)
        if holder in held:
            held[holder].append(shard)
    by_load = sorted(ordered, key=lambda member: (-len(held[member]), member))
    quota = {member: base + (1 if rank < extra else 0) for rank, member in enumerate(by_load)}
    assignment: dict[int, str] = {}
    unassigned: list[int] = []
    for member in ordered:
        keep = held[member][: quota[member]]
        for shard in keep:
            assignment[shard] = member
        unassigned.extend(held[member][quota[member] :])
    unassigned.extend(shard for shard in range(shard_count) if current.get(shard) not in held)
    room = [member for member in ordered for _ in range(quota[member] - len(held[member][: quota[member]]))]
    for shard, member in zip(sorted(unassigned), room, strict=True):
        assignment[shard] = member
    return assignment
