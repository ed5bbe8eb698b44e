"""Ollama's HTTP conventions around every route: CORS, the Host guard on loopback, the
body limit, plain-text 404/405 and HEAD."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from api.http import origin_regex
from cli.ports import free_port
from tests.conftest import ApiFactory

PREFLIGHT = {"Access-Control-Request-Method": "POST"}


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "https://localhost:3000",
        "http://127.0.0.1:8080",
        "http://0.0.0.0:1",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://abc",
        "vscode-file://vscode-app",
        "chrome-extension://abcdef",
        "moz-extension://1234",
        "https://chat.example.com",  # configured
        "https://a.internal.example",  # configured with a wildcard
    ],
)
def test_allowed_origins(origin: str) -> None:
    pattern = origin_regex(["https://chat.example.com", "https://*.example"])
    assert pattern.fullmatch(origin)


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example.com", "http://localhost.evil.com", "http://127.0.0.1.nip.io", "null"],
)
def test_other_origins(origin: str) -> None:
    assert not origin_regex(["https://chat.example.com"]).fullmatch(origin)


async def test_preflight_is_204_with_ollamas_headers(api: ApiFactory) -> None:
    client = await api()
    origin = "http://localhost:5173"
    response = await client.options(
        "/api/chat",
        headers={
            **PREFLIGHT,
            "Origin": origin,
            "Access-Control-Request-Headers": "content-type,authorization,x-stainless-os",
        },
    )
    assert response.status_code == 204 and response.content == b""
    assert response.headers["access-control-allow-origin"] == origin
    allowed = response.headers["access-control-allow-headers"].lower().split(",")
    for header in ("authorization", "content-type", "user-agent", "openai-beta", "x-stainless-os"):
        assert header in allowed
    assert "DELETE" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-max-age"] == "43200"


async def test_a_cors_request_gets_the_origin_back(api: ApiFactory) -> None:
    client = await api(origins="https://chat.example.com")
    response = await client.get("/api/version", headers={"Origin": "https://chat.example.com"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "Origin" in response.headers.get_list("vary")


async def test_other_origins_are_refused(api: ApiFactory) -> None:
    client = await api()
    for method in ("GET", "OPTIONS"):
        response = await client.request(
            method, "/api/tags", headers={**PREFLIGHT, "Origin": "https://evil.example"}
        )
        assert response.status_code == 403 and response.content == b""
        assert "access-control-allow-origin" not in response.headers


async def test_a_wildcard_setting_allows_every_origin(api: ApiFactory) -> None:
    client = await api(origins="*")
    response = await client.get("/api/version", headers={"Origin": "https://anything.example"})
    assert response.headers["access-control-allow-origin"] == "https://anything.example"


async def test_same_origin_requests_are_not_cors(api: ApiFactory) -> None:
    client = await api()
    host = client.base_url.netloc.decode()
    response = await client.get("/api/version", headers={"Origin": f"http://{host}"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:11434", "foo.localhost", "box.local", "db.internal", "10.0.0.5",
     "192.168.1.20:80", "172.16.0.1", "127.0.0.2", "[::1]:11434", "0.0.0.0"],
)  # fmt: skip
async def test_host_guard_lets_local_hosts_in(api: ApiFactory, host: str) -> None:
    client = await api()
    assert (await client.get("/api/version", headers={"Host": host})).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "8.8.8.8", "localhost.evil.com", "[2001:db8::1]"])
async def test_host_guard_refuses_other_hosts_on_loopback(api: ApiFactory, host: str) -> None:
    client = await api()
    response = await client.get("/api/version", headers={"Host": host})
    assert response.status_code == 403 and response.content == b""


async def test_options_from_an_allowed_host_name_is_204(api: ApiFactory) -> None:
    client = await api()
    response = await client.options("/api/chat", headers={"Host": "box.local"})
    assert response.status_code == 204


async def test_no_host_guard_when_bound_to_all_interfaces(api: ApiFactory) -> None:
    client = await api(host=f"0.0.0.0:{free_port()}")
    response = await client.get("/api/version", headers={"Host": "evil.example"})
    assert response.status_code == 200


async def test_a_body_announced_too_large_is_413(api: ApiFactory) -> None:
    client = await api(max_body_bytes=2048)
    response = await client.post("/api/chat", content=b"{" + b" " * 4096 + b"}")
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "request body too large"}


async def test_a_streamed_body_is_cut_off_at_the_limit(api: ApiFactory) -> None:
    client = await api(max_body_bytes=2048)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(8):
            yield b" " * 1024

    response = await client.post("/api/generate", content=chunks())
    assert response.status_code == 413
    assert response.json() == {"error": "request body too large"}


async def test_a_body_under_the_limit_passes(api: ApiFactory) -> None:
    client = await api(max_body_bytes=2048)
    response = await client.post("/api/show", json={"model": "nope", "pad": "x" * 1500})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "route",
    ["POST /", "POST /api/version", "POST /api/tags", "GET /api/show", "GET /api/delete",
     "GET /api/copy", "POST /api/ps", "GET /api/embed", "GET /api/embeddings", "PUT /api/chat"],
)  # fmt: skip
async def test_wrong_method_is_405_in_plain_text(api: ApiFactory, route: str) -> None:
    client = await api()
    method, path = route.split(" ")
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.text == "405 method not allowed"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("path", ["/", "/api/version", "/api/tags"])
async def test_head_on_get_routes(api: ApiFactory, path: str) -> None:
    client = await api()
    response = await client.head(path)
    assert response.status_code == 200 and response.content == b""


async def test_unknown_route_is_404_in_plain_text(api: ApiFactory) -> None:
    client = await api()
    response = await client.post("/api/nothing-here", json={"model": "x"})
    assert response.status_code == 404 and response.text == "404 page not found"
