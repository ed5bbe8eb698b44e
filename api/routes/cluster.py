"""Herd's own routes, beside Ollama's: GET /api/cluster (workers, replicas, queues) and
POST /api/scale (a model's replica policy, ``herd scale``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, StrictInt

from api import bodies
from api.state import AliasesDep, StateDep
from shared import names
from shared.errors import MODEL_REQUIRED, InvalidRequest, ModelNotFound
from shared.messages import ReplicaPolicy, WorkerAdvert
from shared.queues import Queue

router = APIRouter()


@router.get("/api/cluster")
async def cluster(state: StateDep) -> dict[str, Any]:
    """Every live worker, and each model they advertise: where it is loaded or loading,
    its queue, its replica policy."""
    workers = await state.registry.workers(fresh=True)
    models = sorted({model.name for worker in workers for model in worker.models})
    queues, policies = await state.registry.demand(models)
    return _cluster(workers, queues, policies)


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    min_replicas: StrictInt | None = None
    max_replicas: StrictInt | None = None


def _policy(body: ScaleRequest) -> ReplicaPolicy | None:
    """The policy asked for; None (remove it) for ``min_replicas: 0`` without a maximum."""
    low, high = body.min_replicas, body.max_replicas
    if low is None:
        raise InvalidRequest("min_replicas is required")
    if low < 0:
        raise InvalidRequest("min_replicas must be 0 or more")
    if high is not None and high < max(1, low):
        raise InvalidRequest("max_replicas must be at least 1 and at least min_replicas")
    if low == 0 and high is None:
        return None
    return ReplicaPolicy(min_replicas=low, max_replicas=high)


@router.post("/api/scale")
async def scale(request: Request, state: StateDep, aliases: AliasesDep) -> dict[str, Any]:
    """Set how many workers keep a model loaded; the workers' placement reads it."""
    body = bodies.parse(await request.body(), ScaleRequest)
    if not body.model:
        raise InvalidRequest(MODEL_REQUIRED)
    name = names.normalize(body.model)
    policy = _policy(body)
    advert = await aliases.resolve(name)
    if advert is None:
        raise ModelNotFound.named(name)
    await state.registry.set_policy(advert.name, policy)
    return {"model": advert.name, "policy": policy.model_dump() if policy else None}


def _cluster(
    workers: list[WorkerAdvert], queues: dict[str, Queue], policies: dict[str, ReplicaPolicy]
) -> dict[str, Any]:
    """``/api/cluster`` (Herd's own, no Ollama shape): every live worker, and for each model
    in ``queues`` where it is loaded or loading, its queue, and its replica policy."""
    models: dict[str, Any] = {}
    for name, queue in sorted(queues.items()):
        policy = policies.get(name)
        models[name] = {
            "replicas": [w.worker_id for w in workers if any(m.name == name for m in w.loaded)],
            "loading": [w.worker_id for w in workers if name in w.loading],
            "waiting": queue.waiting,
            "oldest_wait_s": queue.oldest_wait_s,
            "pending": queue.pending,
            "policy": policy.model_dump() if policy is not None else None,
            "tokens_generated": sum(w.tokens_generated.get(name, 0) for w in workers),
        }
    ordered = sorted(workers, key=lambda w: w.worker_id)
    return {"workers": [_cluster_worker(w) for w in ordered], "models": models}


def _cluster_worker(worker: WorkerAdvert) -> dict[str, Any]:
    return {
        "id": worker.worker_id,
        "host": worker.host,
        "version": worker.version,
        "engine": worker.engine,
        "ready": worker.ready,
        "started_at": worker.started_at,
        "devices": [
            {"name": d.name, "kind": d.kind, "total": d.total_bytes, "free": d.free_bytes}
            for d in worker.devices
        ],
        "memory_total": worker.memory_total,
        "memory_free": worker.memory_free,
        "slots": {"total": worker.slots_total, "free": worker.slots_free},
        "tokens_generated": sum(worker.tokens_generated.values()),
        "loading": list(worker.loading),
        "loaded": [
            {
                "name": m.name,
                "size": m.size_bytes,
                "size_vram": m.size_vram,
                "context_length": m.context_length,
                "slots": {"total": m.slots, "busy": m.busy},
                "expires_at": m.expires_at,
            }
            for m in worker.loaded
        ],
    }
