"""What a GGUF file says about its model, as Ollama shows it: details, ``model_info``,
digest, parameters and capabilities (``describe``), read from the header alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import gguf

from shared.messages import ModelAdvert
from worker.gguf_header import Header, fingerprint, read_header
from worker.model_files import ModelSpec
from worker.prompts.builtin import BUILTIN, BY_ARCHITECTURE
from worker.prompts.go_execute import GoTemplate
from worker.prompts.jinja import JinjaTemplate
from worker.prompts.template import ChatTemplate

#: Keys Ollama leaves out of /api/show's ``model_info``.
HIDDEN_KEYS = frozenset({"general.name", "tokenizer.chat_template"})


def human_number(count: int) -> str:
    """Ollama's ``format.HumanNumber``: 268098176 → ``268.10M``, 8e9 → ``8B``."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2)):
        if count >= scale:
            number = count / scale
            return (
                f"{number:.0f}{unit}" if number == int(number) else f"{number:.{decimals}f}{unit}"
            )
    if count >= 1000:
        return f"{count / 1000:.0f}K"
    return str(count)


def quantization(metadata: dict[str, Any]) -> str:
    file_type = metadata.get("general.file_type")
    if not isinstance(file_type, int):
        return "unknown"
    try:
        return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        return "unknown"


def model_info(header: Header) -> dict[str, Any]:
    """/api/show's ``model_info``: every key but the name and chat template, plus the count."""
    info = {k: v for k, v in header.metadata.items() if k not in HIDDEN_KEYS}
    info["general.parameter_count"] = header.parameter_count
    return dict(sorted(info.items()))


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def capabilities(header: Header, template: list[str]) -> list[str]:
    """Ollama's capability names, computed as ``server/images.go`` does for a GGUF:
    ``template`` holds what the chat template handles (``tools``, ``thinking``)."""
    arch = header.metadata.get("general.architecture", "")
    if f"{arch}.pooling_type" in header.metadata:
        return ["embedding", *template]
    found = ["completion", *template]
    if header.fim_tokens is not None:
        found.append("insert")
    return found


@dataclass(frozen=True)
class Description:
    """A servable model as read from its file, before (and independent of) loading it."""

    spec: ModelSpec
    header: Header
    template: ChatTemplate
    #: Modelfile-style defaults: the request's options override them.
    parameters: dict[str, list[Any]]
    advert: ModelAdvert

    @property
    def arch(self) -> str:
        return str(self.header.metadata.get("general.architecture", ""))

    @property
    def trained_context(self) -> int:
        return int(self.header.metadata.get(f"{self.arch}.context_length", 0) or 0)

    @property
    def embedding_only(self) -> bool:
        return "completion" not in self.advert.capabilities

    def kv_bytes(self, n_ctx: int) -> int:
        """An estimate of the KV cache for ``n_ctx`` tokens (f16, every layer full size)."""
        meta, arch = self.header.metadata, self.arch
        heads = _first_int(meta.get(f"{arch}.attention.head_count"), 1)
        kv_heads = _first_int(meta.get(f"{arch}.attention.head_count_kv"), heads)
        width = int(meta.get(f"{arch}.embedding_length", 0) or 0)
        key = int(meta.get(f"{arch}.attention.key_length", 0) or width // max(heads, 1))
        value = int(meta.get(f"{arch}.attention.value_length", 0) or key)
        layers = int(meta.get(f"{arch}.block_count", 0) or 0)
        return layers * n_ctx * kv_heads * (key + value) * 2


def _first_int(value: Any, default: int) -> int:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and value > 0 else default


def _template(spec: ModelSpec, header: Header) -> ChatTemplate:
    if spec.template is not None:  # a Modelfile's TEMPLATE replaces the GGUF's own
        return GoTemplate(spec.template)
    if spec.chat_format is not None:
        return BUILTIN[spec.chat_format]
    source = header.metadata.get("tokenizer.chat_template")
    if not isinstance(source, str):
        builtin = BY_ARCHITECTURE.get(str(header.metadata.get("general.architecture", "")))
        if builtin is not None:
            return BUILTIN[builtin]
        return GoTemplate("{{ .Prompt }}")  # Ollama's template for a model without one
    tokens = header.special_tokens
    bos = header.metadata.get("tokenizer.ggml.bos_token_id")
    eos = header.metadata.get("tokenizer.ggml.eos_token_id")
    return JinjaTemplate(
        source,
        bos_token=tokens.get(bos, "") if isinstance(bos, int) else "",
        eos_token=tokens.get(eos, "") if isinstance(eos, int) else "",
    )


def describe(spec: ModelSpec) -> Description:
    """Read ``spec``'s GGUF header and build what /api/tags and /api/show tell of it."""
    header = read_header(spec.path)
    template = _template(spec, header)
    meta = header.metadata
    arch = str(meta.get("general.architecture", ""))
    parameters = {**({"stop": template.stops} if template.stops else {}), **spec.parameters}
    stat = spec.path.stat()
    advert = ModelAdvert(
        name=spec.name,
        size_bytes=stat.st_size,
        digest=spec.digest or fingerprint(spec.path, header.header_bytes),
        family=arch,
        parameter_size=human_number(header.parameter_count),
        quantization_level=quantization(meta),
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),
        embedding_length=int(meta.get(f"{arch}.embedding_length", 0) or 0),
        modified_at=rfc3339(stat.st_mtime),
        capabilities=capabilities(header, template.capabilities),
        template=template.source,
        parameters=parameters,
        license=_license(meta.get("general.license")),
        model_info=model_info(header),
    ).model_copy(update=spec.advert_fields())
    return Description(spec, header, template, parameters, advert)


def _license(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value) if value else ""
