"""Request ids end to end: an `X-Request-ID` is kept (else made), sent back, and carried in
the job to the worker's log lines."""

from __future__ import annotations

import re

from redis.asyncio import Redis
from structlog.testing import capture_logs

from shared import keys
from tests.conftest import ApiFactory, ProcessFactory, process_log, worker_env
from tests.polling import until

CHAT = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def test_a_clients_request_id_reaches_the_workers_log_lines(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api()
    child = herd_process("worker", **worker_env(redis_url, "traced"))

    async def up() -> bool:
        return bool(await redis.exists(keys.worker_key("traced")))

    await until(up, timeout_s=30)
    answer = await client.post("/api/chat", json=CHAT, headers={"X-Request-ID": "trace-abc.123"})
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "trace-abc.123"

    def finished() -> bool:
        return any(
            line.get("event") == "job_finished" and line.get("request_id") == "trace-abc.123"
            for line in process_log(child)
        )

    await until(finished, timeout_s=10)


async def test_a_request_id_is_made_when_none_or_a_bad_one_comes(api: ApiFactory) -> None:
    client = await api()
    made = (await client.get("/api/version")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    for bad in ("has spaces", "x" * 129, "semi;colon"):
        replaced = (await client.get("/api/version", headers={"X-Request-ID": bad})).headers
        assert replaced["x-request-id"] != bad and re.fullmatch(
            r"[0-9a-f]{32}", replaced["x-request-id"]
        )
    refused = await client.get("/api/nothing-here", headers={"X-Request-ID": "kept-on-404"})
    assert refused.headers["x-request-id"] == "kept-on-404"


async def test_one_summary_line_per_request_says_how_it_went(
    api: ApiFactory, herd_process: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    client = await api()
    herd_process("worker", **worker_env(redis_url, "summed"))

    async def up() -> bool:
        return bool(await redis.exists(keys.worker_key("summed")))

    await until(up, timeout_s=30)
    with capture_logs() as lines:
        answer = await client.post("/api/chat", json=CHAT, headers={"X-Request-ID": "sum-1"})
    assert answer.status_code == 200
    summary = [line for line in lines if line["event"] == "request_finished"]
    assert len(summary) == 1
    line = summary[0]
    assert line["outcome"] == "stop" and line["worker_id"] == "summed"
    assert line["eval_tokens"] == answer.json()["eval_count"]
    assert line["prompt_tokens"] == answer.json()["prompt_eval_count"]
    assert 0 <= line["ttft_ms"] <= line["total_ms"]
    assert line["eval_ms"] >= 0
