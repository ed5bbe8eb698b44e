"""One settings object per process, read from ``HERD_*`` environment variables.

Build it once in the entry point (``Settings()``) and pass it down; nothing reads the
environment anywhere else.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.durations import keep_alive_seconds
from shared.hostaddr import HostAddress, parse_host


class Settings(BaseSettings):
    """Every knob of an API or worker process. Field ``x`` is set by ``HERD_X``."""

    model_config = SettingsConfigDict(env_prefix="HERD_", extra="ignore", frozen=True)

    redis_url: str | None = Field(
        None, description="Redis URL (redis:// or rediss://). Unset: `herd serve` embeds one."
    )
    redis_password: str | None = Field(
        None, description="Password for Redis; overrides one in the URL (keep it out of the URL)."
    )
    redis_password_file: Path | None = Field(
        None,
        description=(
            "A file holding the Redis password (a mounted Secret; one trailing newline is "
            "dropped). Wins over HERD_REDIS_PASSWORD; read at each new client."
        ),
    )
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Redis Sentinels, comma-separated host:port. Set, clients reach the master the "
            "Sentinels name (HERD_REDIS_URL is not used) and follow it across a failover."
        ),
    )
    redis_sentinel_master: str = Field(
        "mymaster", min_length=1, description="The master's name the Sentinels monitor."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password for the Sentinels themselves (HERD_REDIS_PASSWORD: the data)."
    )
    redis_sentinel_password_file: Path | None = Field(
        None,
        description=(
            "A file holding the Sentinels' password; wins over HERD_REDIS_SENTINEL_PASSWORD."
        ),
    )
    host: Annotated[HostAddress, NoDecode] = Field(
        default_factory=lambda: parse_host(""),
        description="API bind address, OLLAMA_HOST's format ([scheme://]host[:port]).",
    )
    engine: Literal["llama", "fake"] = Field("llama", description="Inference engine.")
    models_dir: Path | None = Field(
        None,
        description="The model store, in Ollama's layout (manifests/, blobs/): every model in "
        "it is served, and so is every loose *.gguf beside them. Pulls and creates write here.",
    )
    max_blob_bytes: int = Field(
        256 * 2**30, gt=0, description="Largest blob the store takes (an upload, a pull's layer)."
    )
    pull_parallel: int = Field(
        4, ge=1, le=32, description="Ranged downloads at once, per blob of a pull."
    )
    pull_lease_s: float = Field(
        60.0,
        gt=0,
        description="A running pull's claim on its job lasts this long unless its worker "
        "renews it: a worker that died (killed, out of memory) has its pull taken over by "
        "another within about this.",
    )
    serve_default_model: bool = Field(True, description="Serve gemma3:270m from its package.")
    worker_id: str = Field(
        default_factory=socket.gethostname, description="Unique id of a worker in the cluster."
    )
    worker_health_addr: Annotated[HostAddress, NoDecode] = Field(
        default_factory=lambda: parse_host("127.0.0.1:11435"),
        description="Where a worker answers /healthz and /readyz.",
    )
    num_parallel: int | Literal["auto"] = Field(
        "auto",
        description=(
            "Requests a loaded model runs at once, batched (each with num_ctx of KV cache). "
            "auto: as many as the device's free memory holds, at most 4 on a CPU, 16 on a GPU."
        ),
    )
    max_queue: int = Field(512, ge=1, description="Jobs waiting per model before 503.")
    prefix_routing: bool = Field(
        True, description="Send a chat's next turn to the worker that holds its prefix."
    )
    keep_alive: str = Field("5m", description="Default keep_alive of a loaded model.")
    num_ctx: int = Field(4096, ge=256, description="Context length a model is loaded with.")
    n_gpu_layers: int = Field(-1, description="Layers offloaded to the GPU (-1: all).")
    log_format: Literal["auto", "json", "console"] = Field("auto")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="How often a worker advertises.")
    heartbeat_ttl_s: float = Field(6.0, gt=0, description="An advert expires after this.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="Drain time on SIGTERM: in-flight jobs get this long to finish."
    )
    queue_timeout_s: float = Field(
        300.0, gt=0, description="A job not started within this is dropped; the client gets 503."
    )
    max_attempts: int = Field(
        2,
        ge=1,
        description="A job whose runs killed this many workers goes to the dead-letter stream.",
    )
    fake_token_delay_s: float = Field(0.01, ge=0, description="FakeEngine: pause per token.")
    fake_models: list[str] = Field(
        default_factory=lambda: ["gemma3:270m"],
        description="FakeEngine: models it serves, each `name` or `name=4GiB` (its memory).",
    )
    fake_load_delay_s: float = Field(0.0, ge=0, description="FakeEngine: time a load takes.")
    fake_prefill_delay_s: float = Field(
        0.0, ge=0, description="FakeEngine: pause before an answer's first piece (a long prompt)."
    )
    fake_memory: ByteSize | None = Field(
        None, description="FakeEngine: the size of the one device it advertises (e.g. 10GiB)."
    )
    fake_capabilities: list[str] = Field(
        default_factory=lambda: ["completion", "tools", "thinking", "insert", "embedding"],
        description="FakeEngine: the capabilities its models advertise.",
    )
    max_loaded_models: int = Field(
        3, ge=1, description="Models one worker keeps loaded; the idle one expiring first goes."
    )
    memory_fraction: float = Field(
        0.9, gt=0, le=1, description="Share of device memory a worker lets models fill."
    )
    scale_out_wait_s: float = Field(
        3.0,
        gt=0,
        description="A loaded model whose oldest queued job waited this long gains a replica.",
    )
    scale_cooldown_s: float = Field(
        10.0, ge=0, description="After a load of a model, no further replica of it this long."
    )
    origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra CORS origins (comma-separated, `*` wildcards), like OLLAMA_ORIGINS.",
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    api_keys: SecretStr | None = Field(
        None,
        description=(
            "API keys, comma-separated, each `key` or `name:key[:scopes[:streams[:rpm]]]` "
            "(scopes joined with +). Set, every route but /, /api/version and the probes "
            "needs `Authorization: Bearer <key>`."
        ),
    )
    api_keys_file: Path | None = Field(
        None, description="A file of API keys, one a line in HERD_API_KEYS's format (# comments)."
    )
    key_max_streams: int = Field(
        0, ge=0, description="Inference requests one key may have in flight (0: no limit)."
    )
    api_key: SecretStr | None = Field(
        None, description="The key the `herd` client verbs send (Authorization: Bearer)."
    )
    key_requests_per_minute: int = Field(
        0, ge=0, description="Requests one key may make per minute, per API process (0: no limit)."
    )

    @field_validator("origins", "redis_sentinels", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"a Sentinel is host:port, not {address!r}")
        return value

    @field_validator("keep_alive")
    @classmethod
    def _check_keep_alive(cls, value: str) -> str:
        keep_alive_seconds(value, setting=True)  # raises on a malformed duration
        return value

    @field_validator("num_parallel")
    @classmethod
    def _check_num_parallel(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("num_parallel must be between 1 and 256, or auto")
        return value

    @property
    def slots(self) -> int | None:
        """``num_parallel`` as a number; None for auto (the engine decides per model)."""
        return None if self.num_parallel == "auto" else self.num_parallel

    @property
    def keep_alive_s(self) -> float:
        seconds = keep_alive_seconds(self.keep_alive, setting=True)
        return 300.0 if seconds is None else seconds

    @field_validator("host", "worker_health_addr", mode="before")
    @classmethod
    def _parse_host(cls, value: object) -> object:
        return parse_host(value) if isinstance(value, str) else value
