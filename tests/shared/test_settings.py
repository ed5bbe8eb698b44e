from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import Settings


def test_reads_herd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_HOST", "0.0.0.0:9999")
    monkeypatch.setenv("HERD_NUM_PARALLEL", "4")
    monkeypatch.setenv("HERD_ENGINE", "fake")
    monkeypatch.setenv("HERD_FAKE_MODELS", '["a:1", "b:2"]')
    settings = Settings()
    assert settings.host.port == 9999
    assert settings.host.host == "0.0.0.0"
    assert settings.num_parallel == 4
    assert settings.fake_models == ["a:1", "b:2"]


def test_default_host_is_ollamas() -> None:
    assert Settings().host.url == "http://127.0.0.1:11434"


def test_rejects_unknown_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_ENGINE", "gpt")
    with pytest.raises(ValidationError):
        Settings()


async def test_redis_password_setting_overrides_the_url(redis_url: str) -> None:
    from shared.redis import connect

    settings = Settings(redis_url=redis_url.replace("//", "//:wrong@"), redis_password="right")
    client = connect(settings)
    assert client.connection_pool.connection_kwargs["password"] == "right"
    await client.aclose()
