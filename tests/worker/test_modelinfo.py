"""What a GGUF's header tells: model_info, parameter size, digest and capabilities.

The GGUFs here are tiny files written with the ``gguf`` package (one small tensor, not
loadable by llama.cpp); only the real gemma3 file is the model the worker serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from shared.messages import ChatMessage
from worker.gguf_header import fingerprint, read_header
from worker.model_files import ModelSpec, default_model
from worker.modelinfo import describe, human_number, model_info

TOOLS_TEMPLATE = (
    "{% if tools %}{{ tools | tojson }}{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
)
THINKING_TEMPLATE = (
    "{% for m in messages %}{{ m.content }}{% endfor %}{% if enable_thinking %}<think>{% endif %}"
)


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    tokens: list[str] | None = None,
    template: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("Tiny Test")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_license("mit")
    writer.add_layer_norm_rms_eps(1e-6)
    vocab = tokens or ["<s>", "</s>", "a", "b", "c", "d", "e"]
    writer.add_token_list(vocab)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    if template is not None:
        writer.add_chat_template(template)
    for key, value in (extra or {}).items():
        writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((len(vocab), 64), dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _spec(path: Path) -> ModelSpec:
    return ModelSpec(name=f"{path.stem}:latest", path=path)


def test_model_info_hides_name_and_template_and_shortens_arrays(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", template=TOOLS_TEMPLATE)
    header = read_header(path)
    info = model_info(header)
    assert "general.name" not in info
    assert "tokenizer.chat_template" not in info
    assert info["tokenizer.ggml.tokens"] == []  # 7 tokens: longer than 5
    assert info["llama.context_length"] == 2048
    assert info["llama.attention.layer_norm_rms_epsilon"] == 1e-06  # float32, shortest form
    assert info["general.parameter_count"] == 7 * 64 + 64
    full = model_info(read_header(path, full=True))
    assert full["tokenizer.ggml.tokens"] == ["<s>", "</s>", "a", "b", "c", "d", "e"]
    assert {k: v for k, v in full.items() if k != "tokenizer.ggml.tokens"} == {
        k: v for k, v in info.items() if k != "tokenizer.ggml.tokens"
    }


def test_advert_details_from_the_header(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", template=TOOLS_TEMPLATE)
    advert = describe(_spec(path)).advert
    assert advert.family == "llama"
    assert advert.quantization_level == "F16"
    assert advert.parameter_size == "512"
    assert advert.context_length == 2048
    assert advert.embedding_length == 64
    assert advert.size_bytes == path.stat().st_size
    assert advert.license == "mit"
    assert advert.template == TOOLS_TEMPLATE
    assert advert.parameters == {"stop": ["</s>"]}
    assert advert.modified_at.endswith("Z")
    assert len(advert.digest) == 64 and advert.digest == fingerprint(
        path, read_header(path).header_bytes
    )


def test_digest_follows_the_content(tmp_path: Path) -> None:
    first = describe(_spec(write_gguf(tmp_path / "a.gguf"))).advert.digest
    same = describe(_spec(write_gguf(tmp_path / "b.gguf"))).advert.digest
    other = describe(_spec(write_gguf(tmp_path / "c.gguf", template="{{ x }}"))).advert.digest
    assert first == same != other


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["completion"]),
        ({"template": TOOLS_TEMPLATE}, ["completion", "tools"]),
        ({"template": THINKING_TEMPLATE}, ["completion", "thinking"]),
        (
            {"tokens": ["<s>", "</s>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]},
            ["completion", "insert"],
        ),
        ({"tokens": ["<s>", "</s>", "<|fim_prefix|>", "x", "y"]}, ["completion"]),
        ({"arch": "bert", "extra": {"bert.pooling_type": 1}}, ["embedding"]),
    ],
)
def test_capabilities(tmp_path: Path, kwargs: dict[str, Any], expected: list[str]) -> None:
    path = write_gguf(tmp_path / "m.gguf", **kwargs)
    assert describe(_spec(path)).advert.capabilities == expected


def test_fim_tokens_from_metadata_ids(tmp_path: Path) -> None:
    extra = {
        "tokenizer.ggml.fim_pre_token_id": 2,
        "tokenizer.ggml.fim_suf_token_id": 3,
        "tokenizer.ggml.fim_mid_token_id": 4,
    }
    header = read_header(write_gguf(tmp_path / "m.gguf", extra=extra))
    assert header.fim_tokens == (2, 3, 4)


def test_gemma3_package_model() -> None:
    desc = describe(default_model())
    advert = desc.advert
    # its vocabulary has no fill-in-the-middle tokens, and the built-in format has no tools
    assert desc.header.fim_tokens is None
    assert advert.capabilities == ["completion"]
    assert advert.family == "gemma3"
    assert advert.parameter_size == "268.10M"
    assert advert.quantization_level == "Q4_K_M"
    assert advert.context_length == 32768
    assert advert.embedding_length == 640
    assert advert.license == "gemma"
    assert advert.parameters["stop"] == ["<end_of_turn>"]
    assert "<start_of_turn>" in advert.template
    assert advert.model_info["general.architecture"] == "gemma3"


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (268098176, "268.10M"),
        (8_000_000_000, "8B"),
        (1_236_000_000, "1.2B"),
        (1500, "2K"),
        (7, "7"),
    ],
)
def test_human_number(count: int, text: str) -> None:
    assert human_number(count) == text


def test_a_gguf_without_a_template_chats_in_its_familys_turns() -> None:
    """A model created from the Gemma 3 file (no chat template inside, no TEMPLATE layer)
    gets Gemma's turns and end token, not a raw prompt."""
    created = ModelSpec(name="pirate:latest", path=default_model().path, system="Arr.")
    desc = describe(created)
    rendered = desc.template.render(
        [ChatMessage(role="user", content="Where is it?")], tools=None, think=None
    )
    assert (
        rendered.prompt == "<start_of_turn>user\nWhere is it?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert desc.parameters["stop"] == ["<end_of_turn>"]
