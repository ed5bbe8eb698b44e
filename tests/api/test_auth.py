"""API keys (``api.auth``): open without keys; with them, 401/403/429 in Ollama's shape (and
OpenAI's on /v1), scopes, limits, keys from a file, and never a key in the log."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import ollama
import openai
import orjson
import pytest
import structlog
from redis.asyncio import Redis

from api.app import create_app
from api.auth import ApiScope, KeyConfigError, Limits, Need, load_keys, need, parse_entry
from cli.ports import free_port
from shared.errors import TooManyRequests
from tests.conftest import ApiFactory, ProcessFactory, SettingsFactory, WorkerFactory, process_log
from tests.polling import until
from worker.fake_engine import REPLY

#: Random keys: any 8 characters of one found in a log were logged.
BOTH, INFER, ADMIN, WRONG = (secrets.token_urlsafe(24) for _ in range(4))
KEYS = f"{BOTH},app:{INFER}:inference,ops:{ADMIN}:admin"
CHAT = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
UNAUTHORIZED = {"error": "unauthorized"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def client(api: ApiFactory) -> httpx.AsyncClient:
    return await api(api_keys=KEYS)


# -- no keys: today's behaviour ---------------------------------------------------------


async def test_without_keys_everything_is_open(api: ApiFactory) -> None:
    client = await api()
    assert (await client.get("/api/tags")).status_code == 200
    assert (await client.get("/api/tags", headers=bearer(WRONG))).status_code == 200
    assert (await client.post("/api/scale", json={})).status_code == 400


def test_without_keys_a_public_address_is_warned_about(make_settings: SettingsFactory) -> None:
    with structlog.testing.capture_logs() as logs:
        create_app(make_settings(host=f"0.0.0.0:{free_port()}"))
        create_app(make_settings())  # loopback: nothing to say
        create_app(make_settings(host=f"0.0.0.0:{free_port()}", api_keys=BOTH))
    warnings = [entry for entry in logs if entry["event"] == "api_open"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert "HERD_API_KEYS" in warnings[0]["hint"]


# -- 401 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer(WRONG),
        bearer(BOTH[:-1]),  # a prefix of a real key
        {"Authorization": BOTH},  # no scheme
        {"Authorization": f"Basic {BOTH}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {BOTH} {BOTH}"},
    ],
    ids=["missing", "wrong", "prefix", "no-scheme", "basic", "empty", "two-tokens"],
)
async def test_no_valid_key_is_401_in_ollamas_shape(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in [("GET", "/api/tags"), ("POST", "/api/chat"), ("DELETE", "/api/delete")]:
        response = await client.request(method, path, headers=headers, json=CHAT)
        assert response.status_code == 401, path
        assert response.json() == UNAUTHORIZED
        assert response.headers["content-type"] == "application/json"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_two_authorization_headers_are_401(client: httpx.AsyncClient) -> None:
    headers = [("Authorization", f"Bearer {BOTH}"), ("Authorization", f"Bearer {BOTH}")]
    assert (await client.get("/api/tags", headers=headers)).status_code == 401


@pytest.mark.parametrize("headers", [{}, bearer(WRONG)], ids=["missing", "wrong"])
async def test_no_valid_key_is_401_in_openais_shape_on_v1(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]:
        response = await client.request(method, path, headers=headers, json=CHAT)
        assert response.status_code == 401
        assert response.json() == {
            "error": {
                "message": "unauthorized",
                "type": "api_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }


async def test_exempt_routes_stay_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/")).text == "Ollama is running"
    assert (await client.head("/")).status_code == 200
    assert (await client.get("/api/version")).status_code == 200
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_unknown_routes_need_a_key_before_they_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/nothing")).status_code == 401
    assert (await client.get("/api/nothing", headers=bearer(BOTH))).text == "404 page not found"


async def test_a_refusal_still_carries_cors_and_preflights_need_no_key(
    client: httpx.AsyncClient,
) -> None:
    origin = {"Origin": "http://localhost:3000"}
    preflight = await client.options(
        "/api/chat", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204
    refused = await client.post("/api/chat", headers=origin, json=CHAT)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == origin["Origin"]


# -- valid keys and scopes ---------------------------------------------------------------


async def test_a_valid_key_works_on_both_apis(
    client: httpx.AsyncClient, worker: WorkerFactory
) -> None:
    await worker()
    chat = await client.post("/api/chat", json=CHAT, headers=bearer(BOTH))
    assert chat.status_code == 200 and chat.json()["message"]["content"] == REPLY
    lower = await client.get("/api/tags", headers={"authorization": f"bearer {INFER}"})
    assert lower.status_code == 200
    models = await client.get("/v1/models", headers=bearer(ADMIN))
    assert models.status_code == 200 and models.json()["object"] == "list"


@pytest.mark.parametrize(
    ("key", "method", "path", "status"),
    [
        (INFER, "DELETE", "/api/delete", 403),
        (INFER, "POST", "/api/copy", 403),
        (INFER, "POST", "/api/scale", 403),
        (INFER, "POST", "/api/pull", 403),  # reserved: admin once it exists
        (INFER, "GET", "/api/dlq", 403),
        (INFER, "POST", "/api/show", 404),  # read-only: any key (the model is unknown)
        (INFER, "GET", "/api/ps", 200),
        (INFER, "GET", "/api/cluster", 200),
        (ADMIN, "POST", "/api/chat", 403),  # admin does not imply inference
        (ADMIN, "POST", "/api/generate", 403),
        (ADMIN, "POST", "/api/embed", 403),
        (ADMIN, "POST", "/v1/chat/completions", 403),
        (ADMIN, "DELETE", "/api/delete", 404),  # allowed (the model is unknown)
        (ADMIN, "POST", "/api/scale", 400),
        (ADMIN, "GET", "/api/ps", 200),
        (BOTH, "DELETE", "/api/delete", 404),
        (BOTH, "POST", "/api/chat", 404),
    ],
)
async def test_scopes(
    client: httpx.AsyncClient, key: str, method: str, path: str, status: int
) -> None:
    body = {"model": "nothing:here", "messages": [], "prompt": "x", "input": "x"}
    response = await client.request(method, path, json=body, headers=bearer(key))
    assert response.status_code == status
    if status == 403:
        scope = "admin" if key == INFER else "inference"
        message = f"forbidden: this API key lacks the {scope} scope"
        if path.startswith("/v1/"):
            assert response.json()["error"]["message"] == message
        else:
            assert response.json() == {"error": message}


def test_route_needs() -> None:
    assert need("/") is Need.NOTHING and need("/readyz") is Need.NOTHING
    assert need("/api/tags") is Need.ANY and need("/v1/models/hf.co/a/b") is Need.ANY
    assert need("/api/chat/") is Need.INFERENCE and need("/v1/embeddings") is Need.INFERENCE
    for path in ("/api/create", "/api/push", "/api/blobs/sha256:ab", "/api/dlq/x", "/x", "/v1"):
        assert need(path) is Need.ADMIN, path


# -- keys from a file --------------------------------------------------------------------


async def test_keys_from_a_file_with_names_and_scopes(api: ApiFactory, tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(
        f"# team keys\n\n{INFER}\nops:{ADMIN}:admin  # on-call\nci:{WRONG}:inference+admin:2:\n"
    )
    client = await api(api_keys_file=path, api_keys=BOTH)
    assert (await client.get("/api/tags", headers=bearer(BOTH))).status_code == 200
    assert (await client.post("/api/scale", json={}, headers=bearer(INFER))).status_code == 400
    assert (await client.post("/api/scale", json={}, headers=bearer(ADMIN))).status_code == 400
    assert (await client.post("/api/chat", json={}, headers=bearer(ADMIN))).status_code == 403
    assert (await client.post("/api/chat", json={}, headers=bearer(WRONG))).status_code == 400
    assert (await client.get("/api/tags", headers={"Authorization": "Bearer #"})).status_code == 401


def test_key_entries(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(key_max_streams=3, key_requests_per_minute=60)
    bare = parse_entry(BOTH, where="x", default_name="key-1", settings=settings)
    assert bare.name == "key-1" and bare.scopes == frozenset(ApiScope)
    assert (bare.max_streams, bare.requests_per_minute) == (3, 60)
    full = parse_entry(
        f" ci : {BOTH} : admin : 0 : 10 ", where="x", default_name="k", settings=settings
    )
    assert full.name == "ci" and full.scopes == {ApiScope.ADMIN}
    assert (full.max_streams, full.requests_per_minute) == (0, 10)
    assert BOTH.encode() not in repr(full).encode() and BOTH not in repr(settings)
    keys = load_keys(make_settings(api_keys=f"{BOTH}, ,a:{INFER}"))
    assert [key.name for key in keys] == ["key-1", "a"]


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        (f"{BOTH},{BOTH}", "HERD_API_KEYS entry 2: the same key as key-1"),
        (f"a:{BOTH},a:{INFER}", "HERD_API_KEYS entry 2: the name a is taken"),
        (f"a:{BOTH}:inference,admin", "HERD_API_KEYS entry 2: a scope where a key should be"),
        (f"a:{BOTH}:{INFER}", "HERD_API_KEYS entry 1: scopes are inference, admin"),
        (f"a:{BOTH}::x", "HERD_API_KEYS entry 1: streams must be a whole number"),
        (f"a:{BOTH}:admin:1:2:{INFER}", "HERD_API_KEYS entry 1: expected name:key"),
        (f"a b:{BOTH}", "HERD_API_KEYS entry 1: a name is"),
        ("a:", "HERD_API_KEYS entry 1: the key is empty"),
    ],
)
def test_bad_entries_fail_the_start_without_showing_a_key(
    make_settings: SettingsFactory, entries: str, error: str
) -> None:
    with pytest.raises(KeyConfigError) as failure:
        create_app(make_settings(api_keys=entries))
    assert str(failure.value).startswith(error)
    assert not any(key in str(failure.value) for key in (BOTH, INFER))


def test_a_keys_file_without_keys_fails_closed(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(KeyConfigError, match="holds no key"):
        create_app(make_settings(api_keys_file=empty))
    with pytest.raises(KeyConfigError, match="cannot read it"):
        create_app(make_settings(api_keys_file=tmp_path / "missing"))


# -- limits ------------------------------------------------------------------------------


async def test_requests_per_minute_is_429_with_retry_after(api: ApiFactory) -> None:
    client = await api(api_keys=f"a:{BOTH}::0:2,b:{INFER}")
    for _ in range(2):
        assert (await client.get("/api/tags", headers=bearer(BOTH))).status_code == 200
    refused = await client.get("/api/tags", headers=bearer(BOTH))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json() == {"error": "too many requests: this API key may make 2 a minute"}
    on_v1 = await client.get("/v1/models", headers=bearer(BOTH))
    assert on_v1.status_code == 429 and on_v1.json()["error"]["code"] == "rate_limit_exceeded"
    assert (await client.get("/api/tags", headers=bearer(INFER))).status_code == 200  # per key


def test_the_minute_slides(make_settings: SettingsFactory) -> None:
    limits = Limits()
    [key] = load_keys(make_settings(api_keys=f"a:{BOTH}::0:2"))
    limits.admit(key, stream=False, now=100.0)
    limits.admit(key, stream=False, now=130.0)
    with pytest.raises(TooManyRequests) as refused:
        limits.admit(key, stream=False, now=159.5)
    assert refused.value.retry_after_s == 1
    limits.admit(key, stream=False, now=160.0)  # the first one is a minute old
    with pytest.raises(TooManyRequests) as again:
        limits.admit(key, stream=False, now=161.0)
    assert again.value.retry_after_s == 29


async def test_concurrent_streams_are_limited_per_key(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api(api_keys=f"a:{BOTH}:inference:1,b:{INFER}:inference:1", key_max_streams=5)
    await worker(fake_token_delay_s=0.1, num_parallel=4)
    body = {**CHAT, "stream": True}
    async with client.stream("POST", "/api/chat", json=body, headers=bearer(BOTH)) as first:
        assert first.status_code == 200
        lines = first.aiter_lines()
        assert orjson.loads(await anext(lines))["done"] is False  # it is in flight
        refused = await client.post("/api/chat", json=CHAT, headers=bearer(BOTH))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json() == {
            "error": "too many requests: this API key already has 1 in flight"
        }
        refused = await client.post("/v1/embeddings", json={}, headers=bearer(BOTH))
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "api_error"
        # another key, and read-only routes of the same key, are not held back
        assert (await client.get("/api/ps", headers=bearer(BOTH))).status_code == 200
        other = await client.post("/api/chat", json=CHAT, headers=bearer(INFER))
        assert other.status_code == 200
        async for _ in lines:
            pass
    # the slot comes back when the stream ends
    again = await client.post("/api/chat", json=CHAT, headers=bearer(BOTH))
    assert again.status_code == 200


async def test_a_stream_left_early_gives_its_slot_back(
    api: ApiFactory, worker: WorkerFactory
) -> None:
    client = await api(api_keys=f"a:{BOTH}:inference:1")
    await worker(fake_token_delay_s=0.1)
    async with client.stream(
        "POST", "/api/chat", json={**CHAT, "stream": True}, headers=bearer(BOTH)
    ) as first:
        await anext(first.aiter_lines())
    # the client went away mid-stream; the server notices and frees the slot

    async def admitted() -> bool:
        response = await client.post("/api/chat", json=CHAT, headers=bearer(BOTH))
        return response.status_code != 429

    await until(admitted, timeout_s=10)


# -- real clients ------------------------------------------------------------------------


async def test_the_ollama_and_openai_clients_send_their_keys(
    client: httpx.AsyncClient, worker: WorkerFactory
) -> None:
    await worker()
    host = str(client.base_url)
    async with ollama.AsyncClient(host=host, headers=bearer(INFER)) as good:
        answer = await good.chat(model="gemma3:270m", messages=[{"role": "user", "content": "hi"}])
        assert answer.message.content == REPLY
        assert [m.model async for m in await good.generate("gemma3:270m", "hi", stream=True)]
    async with ollama.AsyncClient(host=host, headers=bearer(WRONG)) as bad:
        with pytest.raises(ollama.ResponseError) as caught:
            await bad.list()
    assert caught.value.status_code == 401 and caught.value.error == "unauthorized"

    async with openai.AsyncOpenAI(base_url=f"{host}/v1", api_key=INFER, max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(
            model="gemma3:270m", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == REPLY
    async with openai.AsyncOpenAI(base_url=f"{host}/v1", api_key=WRONG, max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as refused:
            await sdk.models.list()
        assert refused.value.status_code == 401
        assert refused.value.code == "invalid_api_key"


# -- the log -----------------------------------------------------------------------------


async def test_keys_never_reach_the_log(
    herd_process: ProcessFactory,
    redis_url: str,
    redis: Redis,
    worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    """A real ``herd api`` process (logging configured as in production, at debug level):
    after right, wrong, malformed, refused and failing requests, no key, nor a part of
    one, is in its log; the names are."""
    path = tmp_path / "keys"
    path.write_text(f"ops:{ADMIN}:admin\n")
    host = f"127.0.0.1:{free_port()}"
    child = herd_process(
        "api",
        HERD_REDIS_URL=redis_url,
        HERD_HOST=host,
        HERD_API_KEYS=f"app:{INFER}:inference",
        HERD_API_KEYS_FILE=str(path),
        HERD_LOG_LEVEL="debug",
    )
    await worker()
    async with httpx.AsyncClient(base_url=f"http://{host}", timeout=30) as client:

        async def up() -> bool:
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(up, timeout_s=30)
        assert (await client.post("/api/chat", json=CHAT, headers=bearer(INFER))).status_code == 200
        assert (await client.get("/api/tags", headers=bearer(WRONG))).status_code == 401
        assert (await client.get("/api/tags", headers={"Authorization": ADMIN})).status_code == 401
        assert (await client.post("/api/chat", json=CHAT, headers=bearer(ADMIN))).status_code == 403
        bad = {**CHAT, "model": "nothing:here"}
        assert (await client.post("/api/chat", json=bad, headers=bearer(INFER))).status_code == 404
        await asyncio.sleep(0.2)  # the log lines of the last requests
    child.terminate()
    child.wait(timeout=20)
    text = "\n".join(orjson.dumps(line).decode() for line in process_log(child))
    for key in (INFER, ADMIN, WRONG):
        parts = {key[start : start + 8] for start in range(len(key) - 7)}
        assert not [part for part in parts if part in text]
    events = [line["event"] for line in process_log(child)]
    assert "unauthorized" in events and "forbidden" in events
    assert any(line.get("api_key") == "app" for line in process_log(child))
    names = [line for line in process_log(child) if line["event"] == "api_keys"]
    assert names and names[0]["names"] == ["app", "ops"]
