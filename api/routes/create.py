"""``POST /api/create``: a model in the store, from an uploaded GGUF (``files``) or from a
model of the store (``from``), with its template, system prompt, parameters, messages and
licenses as layers of their own, written as ``ollama create`` writes them.

Every check runs before the first progress line, so a refusal is a status and one
``{"error": ...}``; the progress lines are Ollama's (``parsing GGUF``, ``using existing
layer …`` / ``creating new layer …``, ``writing manifest``, ``success``). Not supported, and
refused with a 400 that says so: adapters, quantization, safetensors, several files.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api import bodies, fields, gofmt, modelstore
from api.aliases import Aliases
from api.errors import progress_response
from api.gguf_details import NotGGUF, human_number, is_gguf, read_details
from api.modelstore import required_store
from api.state import AliasesDep, AppState, StateDep
from shared import names
from shared.errors import InvalidRequest, ModelNotFound
from shared.store import Config, Layer, Manifest, MediaType, Store, canonical_digest

router = APIRouter()

ADAPTERS_UNSUPPORTED = "adapters are not supported"
QUANTIZATION_UNSUPPORTED = "quantization is not supported: create from a GGUF already quantized"
NEITHER = "neither 'from' or 'files' was specified"
#: Keys the Python and JS clients still declare in their ``Options``: kept, never refused.
LEGACY_PARAMETERS = frozenset(
    {
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "embedding_only",
        "tfs_z",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
    }
)


class CreateRequest(BaseModel):
    """``api.CreateRequest`` (the fields Herd reads; unknown ones ignored, as Go does)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str = ""
    name: str = ""  # deprecated spelling of ``model``
    from_: str = Field("", alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[bodies.ChatRequestMessage] | None = None
    quantize: str = ""
    quantization: str = ""  # deprecated spelling of ``quantize``
    stream: StrictBool | None = None


@dataclass
class _Plan:
    """What a checked request will write."""

    name: str
    layers: list[Layer] = field(default_factory=list)
    config: Config | None = None  # None: read from the GGUF (``gguf``) once streaming
    gguf: Layer | None = None
    parameters: dict[str, Any] | None = None
    licenses: list[str] | None = None


def _relative(path: str) -> bool:
    """Go's ``fs.ValidPath``: slash-separated, no empty, ``.`` or ``..`` element."""
    return bool(path) and all(part not in ("", ".", "..") for part in path.split("/"))


def _parameters(given: dict[str, Any]) -> dict[str, Any]:
    """Known options type-checked with ``options``' texts (integers made whole); an unknown
    name is refused with the text ``ollama create`` gives for a Modelfile's."""
    kinds = {**fields.SAMPLING_OPTIONS, **fields.LOAD_OPTIONS}
    checked: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        if key in kinds:
            fields.parse_options({key: value})  # raises Ollama's type texts
            checked[key] = int(value) if kinds[key] == "integer" else value
        elif key in LEGACY_PARAMETERS:
            checked[key] = value
        else:
            raise InvalidRequest(f"unknown parameter '{key}'")
    return checked


async def _base(store: Store, aliases: Aliases, body: CreateRequest, plan: _Plan) -> None:
    """The layers and config the new model starts from: a store model's, or one GGUF's."""
    if body.from_:
        source = names.normalize(body.from_)
        stored = await asyncio.to_thread(store.get, await aliases.target(source) or source)
        if stored is None:
            if await aliases.resolve(source) is not None:
                raise InvalidRequest(
                    f"model {gofmt.quote(body.from_)} is not in the model store (it is served "
                    "from a file outside it): create from its GGUF file instead"
                )
            raise ModelNotFound(f"model {gofmt.quote(body.from_)} not found")
        plan.layers = list(stored.manifest.layers)
        plan.config = Config.model_validate(store.read_json(stored.manifest.config.digest))
        return
    if body.files is None:
        raise InvalidRequest(NEITHER)
    if not body.files:
        raise InvalidRequest("no files provided to convert")
    if len(body.files) > 1:
        raise InvalidRequest("only one GGUF file is supported")
    [(file_name, digest)] = body.files.items()
    digest = canonical_digest(digest)
    if not store.has_blob(digest):
        where = gofmt.quote(file_name)
        raise InvalidRequest(f"blob {digest} ({where}) not found: upload it to /api/blobs first")
    path = store.blob_path(digest)
    if not await asyncio.to_thread(is_gguf, path):
        raise InvalidRequest("supplied file was not in GGUF format (only GGUF files are supported)")
    plan.gguf = Layer(media_type=MediaType.MODEL, digest=digest, size=path.stat().st_size)
    plan.layers = [plan.gguf]


async def _check(store: Store, aliases: Aliases, body: CreateRequest) -> _Plan:
    """Every refusal, in Ollama's order where it has one, before anything is written."""
    if any(not _relative(path) for path in body.files or {}):
        raise InvalidRequest("file path must be relative")
    plan = _Plan(names.normalize(body.model or body.name))
    if body.adapters:
        raise InvalidRequest(ADAPTERS_UNSUPPORTED)
    if body.quantize or body.quantization:
        raise InvalidRequest(QUANTIZATION_UNSUPPORTED)
    await _base(store, aliases, body, plan)
    if body.parameters is not None:
        plan.parameters = _parameters(body.parameters)
    if body.license is not None:
        given = [body.license] if isinstance(body.license, str) else body.license
        plan.licenses = [text for text in given if text]
    return plan


def go_json(value: object, *, sort_keys: bool = False) -> bytes:
    """What Go's ``json.NewEncoder(w).Encode`` writes (so layers hash as Ollama's do): HTML
    characters escaped, whole floats without ``.0``, a final newline."""
    if isinstance(value, dict):
        value = {k: int(v) if _whole(v) else v for k, v in value.items()}
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    for char, escaped in ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026")):
        raw = raw.replace(char, escaped)
    raw = raw.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")
    return raw + b"\n"


def _whole(value: object) -> bool:
    return isinstance(value, float) and value.is_integer() and abs(value) < 1e21


class _Layers:
    """The new model's layers, each written as it is added; ``status`` is its progress line."""

    def __init__(self, store: Store, base: list[Layer]) -> None:
        self.store = store
        self.layers = list(base)
        self.status = {layer.digest: f"using existing layer {layer.digest}" for layer in base}

    def replace(self, media_type: MediaType, contents: list[bytes]) -> None:
        """Drop every layer of ``media_type`` and add one per content, as Ollama does."""
        self.layers = [layer for layer in self.layers if layer.media_type != media_type]
        for data in contents:
            digest = f"sha256:{sha256(data).hexdigest()}"
            verb = "using existing" if self.store.has_blob(digest) else "creating new"
            self.store.write_bytes(data)
            self.status.setdefault(digest, f"{verb} layer {digest}")
            self.layers.append(Layer(media_type=media_type, digest=digest, size=len(data)))

    def of(self, media_type: MediaType) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]


def _build(
    store: Store, body: CreateRequest, plan: _Plan, config: Config
) -> tuple[Manifest, list[str]]:
    """Write the layers and the config; returns the manifest and the progress lines."""
    layers = _Layers(store, plan.layers)
    if body.template:
        layers.replace(MediaType.TEMPLATE, [body.template.encode()])
    if body.system:
        layers.replace(MediaType.SYSTEM, [body.system.encode()])
    if plan.licenses is not None:
        layers.replace(MediaType.LICENSE, [text.encode() for text in plan.licenses])
    params = dict(plan.parameters or {})
    for old in layers.of(MediaType.PARAMS):  # the base's parameters, unless overridden
        for key, value in store.read_json(old.digest).items():
            params.setdefault(key, value)
    if params:
        layers.replace(MediaType.PARAMS, [go_json(params, sort_keys=True)])
    if body.messages:
        messages = [message.model_dump(exclude_none=True) for message in body.messages]
        layers.replace(MediaType.MESSAGES, [go_json(messages)])
    config.rootfs = {"type": "layers", "diff_ids": [layer.digest for layer in layers.layers]}
    config_bytes = config.model_dump_json(exclude_none=True).encode()
    config_layer = Layer(
        media_type=MediaType.CONFIG, digest=store.write_bytes(config_bytes), size=len(config_bytes)
    )
    manifest = Manifest(config=config_layer, layers=layers.layers)
    return manifest, [layers.status[layer.digest] for layer in layers.layers]


def _write(store: Store, name: str, manifest: Manifest) -> None:
    # the replaced manifest's unused blobs go (Ollama's ``RemoveLayers``)
    store.replace_manifest(name, manifest)


def _gguf_config(store: Store, layer: Layer) -> Config:
    """The config blob's details, from the GGUF's header."""
    try:
        details = read_details(store.blob_path(layer.digest))
    except NotGGUF as exc:
        raise InvalidRequest(str(exc)) from exc
    return Config(
        model_family=details.family,
        model_families=[details.family] if details.family else None,
        model_type=human_number(details.parameter_count),
        file_type=details.file_type,
    )


async def _progress(
    store: Store, state: AppState, body: CreateRequest, plan: _Plan
) -> AsyncIterator[dict[str, Any]]:
    config = plan.config
    if plan.gguf is not None:
        yield {"status": "parsing GGUF"}
        config = await asyncio.to_thread(_gguf_config, store, plan.gguf)
    assert config is not None  # from the base model, or the GGUF's just now
    manifest, lines = await asyncio.to_thread(_build, store, body, plan, config)
    for line in lines:
        yield {"status": line}
    yield {"status": "writing manifest"}
    await asyncio.to_thread(_write, store, plan.name, manifest)
    await state.aliases.release(plan.name)
    await modelstore.changed(state.redis)
    written = await asyncio.to_thread(store.get, plan.name)
    if written is not None:  # success once a worker serves it: `show` and `run` work at once
        await modelstore.served(
            state.registry, written.name, written.digest, within_s=_serve_wait(state)
        )
    yield {"status": "success"}


def _serve_wait(state: AppState) -> float:
    """Long enough for every worker's next heartbeat (each rescans the store then)."""
    return 2 * state.settings.heartbeat_interval_s + 1


@router.post("/api/create")
async def create(request: Request, state: StateDep, aliases: AliasesDep) -> Response:
    store = required_store(state.settings)
    body = bodies.parse(await request.body(), CreateRequest)
    plan = await _check(store, aliases, body)
    progress = _progress(store, state, body, plan)
    # without stream, one object once done: {"status": "success"}
    return await progress_response(request, progress, stream=body.stream is not False)
