"""Node leases in Redis: the keys, and taking a lease or a takeover each in one step.

`minidevin.alive.<node>` is a node's lease (a token of its process); `.takeover.<node>`
is held by the node taking it over; `.grace.<node>` delays the takeover of a node found
gone; `.taken.<node>` marks a node taken over (fenced) until it holds its lease again.
A lease is taken only while no takeover is under way and a takeover only while there is
no lease (nor grace), each by a Lua script: a node starting again and a node taking it
over cannot both win.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as redis

TAKEOVER_LEASES = 10  # a takeover holds its key at most this many leases (deleted when done)
# renew the lease only while it is still this process's (an atomic compare-and-expire)
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# take a node's lease only while no takeover of it is under way (one step: a takeover cannot
# be taken between the check and the set); a lease taken ends the node's mark of taken over
TAKE_LEASE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('DEL', KEYS[3])
return 1
"""
# take the takeover of a node only while none of KEYS[2..] is set (its lease, its grace)
TAKE_OVER = """
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return -1 end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


def alive_key(node: str) -> str:
    return f"minidevin.alive.{node}"


def takeover_key(node: str) -> str:
    return f"minidevin.takeover.{node}"


def grace_key(node: str) -> str:
    """Set for a lease when a node found gone is made known: not taken over before it ends."""
    return f"minidevin.grace.{node}"


def taken_key(node: str) -> str:
    """Set once a node is taken over (its generation moved on), until it takes its lease."""
    return f"minidevin.taken.{node}"


async def take_lease(client: redis.Redis, node: str, token: str, millis: int) -> bool:
    """Whether `node`'s lease is taken for `token` (for `millis`): only if no process holds
    it and no takeover of the node is under way, in one step."""
    keys = (alive_key(node), takeover_key(node), taken_key(node))
    return bool(await client.eval(TAKE_LEASE, len(keys), *keys, token, millis))


async def take_takeover(
    client: redis.Redis, node: str, taker: str, millis: int, *, grace: bool = True
) -> int:
    """Take the takeover of `node` for `taker` (for `millis`), in one step: 1 if taken; 0 if
    another takeover of it is under way; -1 if it holds its lease (or, with `grace`, a lease
    of grace)."""
    keys = [takeover_key(node), alive_key(node), *([grace_key(node)] if grace else [])]
    return int(await client.eval(TAKE_OVER, len(keys), *keys, taker, millis))
