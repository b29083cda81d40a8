"""The generator deployment's request router on Ray Serve: the model first, then the trajectory.

Two keys route a request, a coarse one and a fine one:

- the **model** (its pool name) is the request's Serve *multiplexed model id*: the replica
  loads that engine through ``@serve.multiplexed`` (an LRU of as many engines as its memory
  budget holds). While some replica holds the model, the request waits for one of those
  (up to ``model_wait_s``: a load elsewhere costs more than a short queue), then Serve's
  own multiplex routing takes over (its holders, then the replica with the fewest models,
  then any);
- the **affinity** (the request's trajectory, or its LoRA adapter set) is a keyword of the
  call; this router remembers which replica it last sent each affinity to (an LRU of
  ``affinity_keys``) and tries that replica first while it still holds the model, so a
  repeat finds that replica's memory tier and an adapter set its loaded adapters.

A busy preferred replica costs nothing: Serve probes it, finds it full, and goes on to the
next rank (the model's other holders, then Serve's fallbacks). The memory is per router (one
per ingress replica), a hint that only ever picks among replicas Serve would pick anyway.

Imported by zturbo.server.ray only (Ray at the top: ``zturbo serve --ray``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

# Serve's default router (its DEFAULT_REQUEST_ROUTER_PATH; ray is pinned to 2.60.x)
from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica

AFFINITY_KWARG = "affinity"  # the generator call's keyword that carries the fine key
AFFINITY_KEYS = 256  # affinities a router remembers (LRU)
MODEL_WAIT_S = 5.0  # how long a request waits for a replica that holds its model


class Recent:
    """An LRU map of affinity -> the replica it last went to."""

    def __init__(self, size: int) -> None:
        self.size, self._map = size, OrderedDict[str, Any]()

    def get(self, key: str | None) -> Any:
        return self._map.get(key) if key else None

    def put(self, key: str | None, replica: Any) -> None:
        if not key:
            return
        self._map[key] = replica
        self._map.move_to_end(key)
        while len(self._map) > self.size:
            self._map.popitem(last=False)

    def forget(self, replica: Any) -> None:
        for key in [k for k, r in self._map.items() if r == replica]:
            del self._map[key]


def preferred(recent: Recent, affinity: str | None, model: str | None,
              replicas: dict[Any, Any], holders: set[Any]) -> Any:
    """The replica to try first: the affinity's last one, while it is still a replica and
    (when the request names a model) still holds that model; else None."""
    replica_id = recent.get(affinity)
    if replica_id is None or replica_id not in replicas:
        return None
    if model and replica_id not in holders:
        return None  # it has evicted the model since: a load there is no better than elsewhere
    return replicas[replica_id]


def holders_only(holders: set[Any], replicas: dict[Any, Any], waited_s: float,
                 wait_s: float) -> list[Any] | None:
    """The replicas that hold the model, while the request has waited less than ``wait_s``
    for one of them; None: let Serve's routing choose (no holder, or waited long enough)."""
    held = [replicas[r] for r in holders if r in replicas]
    return held if held and waited_s < wait_s else None


def affinity_of(pending: PendingRequest | None) -> str | None:
    value = pending.kwargs.get(AFFINITY_KWARG) if pending is not None else None
    return value if isinstance(value, str) else None


class ModelAffinityRouter(PowerOfTwoChoicesRequestRouter):
    """Serve's power-of-two router with multiplex routing (the model), plus the affinity's
    last replica tried first."""

    def initialize_state(self, affinity_keys: int = AFFINITY_KEYS,
                         model_wait_s: float = MODEL_WAIT_S, **kwargs: Any) -> None:
        self._recent = Recent(affinity_keys)
        self._model_wait_s = model_wait_s

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        model = pending_request.metadata.multiplexed_model_id if pending_request else ""
        holders = self._multiplexed_model_id_to_replica_ids.get(model, set()) if model else set()
        held = None if pending_request is None else holders_only(
            holders, self._replicas, time.time() - pending_request.created_at,
            self._model_wait_s)
        if pending_request is not None and held is not None:
            pending_request.routing_context.should_backoff = True  # busy: back off, try again
            ranks = [held]
        else:
            ranks = await super().choose_replicas(candidate_replicas, pending_request)
        first = preferred(self._recent, affinity_of(pending_request), model, self._replicas,
                          holders)
        return [[first], *ranks] if first is not None else ranks

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: Any) -> None:
        self._recent.put(affinity_of(pending_request), replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._recent.forget(replica_id)
