"""The API's /metrics: the names dashboards use, moving as requests flow, bounded labels."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import ApiFactory, WorkerFactory
from tests.metrics_text import Samples, parse, value

CHAT = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}]}

API_FAMILIES = {
    # families as the parser names them: a counter without its _total
    "herd_requests": "counter",
    "herd_request_duration_seconds": "histogram",
    "herd_time_to_first_token_seconds": "histogram",
    "herd_inter_token_latency_seconds": "histogram",
    "herd_queue_wait_seconds": "histogram",
    "herd_queue_depth": "gauge",
    "herd_active_streams": "gauge",
}


async def scrape(client: httpx.AsyncClient) -> tuple[dict[str, str], Samples]:
    """(family → type, (sample name, labels) → value) of one scrape."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_the_families_are_exposed_with_their_types(api: ApiFactory) -> None:
    client = await api()
    types, _ = await scrape(client)
    assert {name: types.get(name) for name in API_FAMILIES} == API_FAMILIES


async def test_metrics_move_as_requests_flow(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    await worker()
    for _ in range(2):
        response = await client.post("/api/chat", json=CHAT)
        assert response.status_code == 200
    await client.get("/api/version")
    await client.get("/no/such/path")
    _, samples = await scrape(client)

    route = {"route": "/api/chat", "status": "200"}
    assert value(samples, "herd_requests_total", **route) == 2
    assert value(samples, "herd_requests_total", route="/api/version", status="200") == 1
    assert value(samples, "herd_requests_total", route="other", status="404") == 1
    assert not [labels for (_, labels) in samples if ("route", "/no/such/path") in labels]
    assert value(samples, "herd_request_duration_seconds_count", route="/api/chat") == 2
    model = {"model": "gemma3:270m"}
    assert value(samples, "herd_time_to_first_token_seconds_count", **model) == 2
    assert value(samples, "herd_queue_wait_seconds_count", **model) == 2
    assert value(samples, "herd_inter_token_latency_seconds_count", **model) > 0
    assert value(samples, "herd_active_streams") == 0
    assert ("herd_queue_depth", frozenset(model.items())) in samples
    assert value(samples, "herd_queue_depth", **model) == 0


async def test_active_streams_count_open_streams_and_go_back_to_zero(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api()
    await worker(fake_token_delay_s=0.05)
    chat = {**CHAT, "options": {"num_predict": 40}}
    async with client.stream("POST", "/api/chat", json=chat) as response:
        lines = response.aiter_lines()
        await anext(lines)  # the first token is out: the stream is open
        _, samples = await scrape(client)
        assert value(samples, "herd_active_streams") == 1
        async for _ in lines:
            pass
    # the relay's clean-up ends with the response
    for _ in range(50):
        _, samples = await scrape(client)
        if value(samples, "herd_active_streams") == 0:
            break
        await asyncio.sleep(0.02)
    assert value(samples, "herd_active_streams") == 0


async def test_bad_model_names_add_no_label_values(api: ApiFactory, worker: WorkerFactory) -> None:
    client = await api()
    await worker()
    _, before = await scrape(client)
    for index in range(1000):
        response = await client.post("/api/chat", json={**CHAT, "model": f"nope-{index}"})
        assert response.status_code == 404
    _, after = await scrape(client)
    assert value(after, "herd_requests_total", route="/api/chat", status="404") == 1000
    # the 1,000 requests' only new label values: their route and status (and the first
    # scrape's), never their model names
    new = {
        frozenset((k, v) for k, v in labels if k != "le")
        for key, labels in after
        if (key, labels) not in before
    }
    assert new <= {
        frozenset({("route", "/api/chat"), ("status", "404")}),
        frozenset({("route", "/api/chat")}),
        frozenset({("route", "/metrics"), ("status", "200")}),
        frozenset({("route", "/metrics")}),
    }
