"""LlamaEngine on a tiny random-weight llama GGUF made here with the ``gguf`` package: a
model with a Jinja chat template (tools, thinking) and fill-in-the-middle tokens, the
path every ``HERD_MODELS_DIR`` model takes. Its answers are noise; the prompts are not."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import pytest_asyncio

from shared.errors import InvalidRequest
from shared.messages import (
    ChatMessage,
    GenerateJob,
    SamplingOptions,
    ToolCall,
    ToolCallFunction,
)
from worker.engine import Finish, Piece
from worker.llama.engine import LlamaEngine
from worker.model_files import ModelSpec
from worker.postprocess import Postprocessor

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "tiny:latest"
TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n{% if enable_thinking %}<think>{% endif %}"
)
SPECIALS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
PIECES = ["▁", "a", "e", "o", "▁the", "{", "}", '"', ":", ",", "1", "▁a", "t", "s", "n", "\n"]
GREEDY = SamplingOptions(temperature=0, num_predict=6)


def vocabulary() -> list[tuple[str, gguf.TokenType]]:
    tokens = [
        ("<unk>", gguf.TokenType.UNKNOWN),
        ("<s>", gguf.TokenType.CONTROL),
        ("</s>", gguf.TokenType.CONTROL),
    ]
    tokens += [(f"<0x{b:02X}>", gguf.TokenType.BYTE) for b in range(256)]
    tokens += [(t, gguf.TokenType.CONTROL) for t in SPECIALS]
    tokens += [(t, gguf.TokenType.USER_DEFINED) for t in USER_DEFINED]
    return tokens + [(t, gguf.TokenType.NORMAL) for t in PIECES]


def write_tiny_llama(path: Path, *, width: int = 64, heads: int = 4, ff: int = 128) -> None:
    """A one-layer llama with an SPM vocabulary with byte fallback (random weights)."""
    rng = np.random.default_rng(0)
    vocab = vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(512)
    writer.add_embedding_length(width)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(width // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_scores([-float(i) for i in range(len(vocab))])
    writer.add_token_types([int(k) for _, k in vocab])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(TEMPLATE)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.5).astype(np.float32))

    tensor("token_embd.weight", len(vocab), width)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(width, np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        tensor(f"blk.0.{name}.weight", width, width)
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(width, np.float32))
    tensor("blk.0.ffn_gate.weight", ff, width)
    tensor("blk.0.ffn_up.weight", ff, width)
    tensor("blk.0.ffn_down.weight", width, ff)
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    tensor("output.weight", len(vocab), width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def detokenize(ids: list[int]) -> str:
    """The tiny vocabulary's text for ``ids`` (control tokens included)."""
    vocab = vocabulary()
    out = b""
    for token in ids:
        text, kind = vocab[token]
        if kind == gguf.TokenType.BYTE:
            out += bytes([int(text[3:5], 16)])
        elif token != 1:  # BOS
            out += text.replace("▁", " ").encode()
    return out.decode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaEngine]:
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    write_tiny_llama(path)
    engine = LlamaEngine([ModelSpec(name=MODEL, path=path)], n_ctx=256, n_gpu_layers=0)
    await engine.start()
    yield engine
    await engine.close()


def job(**fields: Any) -> GenerateJob:
    fields.setdefault("kind", "generate")
    fields.setdefault("options", GREEDY)
    fields.setdefault("model", MODEL)
    return GenerateJob(request_id="r", enqueued_at_ms=0, deadline_ms=1, **fields)


async def run(engine: LlamaEngine, request: GenerateJob) -> tuple[str, Finish]:
    text, finish = "", None
    async for output in engine.generate(request):
        if isinstance(output, Piece):
            text += output.text
        else:
            finish = output
    assert finish is not None and finish.context is not None
    return text, finish


def prompt_of(finish: Finish) -> str:
    assert finish.context is not None
    return detokenize(finish.context[: finish.n_prompt_tokens])


async def test_advert_of_a_gguf_with_a_jinja_template(engine: LlamaEngine) -> None:
    [advert] = engine.models()
    assert advert.capabilities == ["completion", "tools", "thinking", "insert"]
    assert advert.template == TEMPLATE
    assert advert.parameters == {"stop": ["</s>"]}
    assert advert.context_length == 512
    [status] = engine.loaded()
    assert status.context_length == 256


async def test_chat_history_with_tools_tool_calls_and_thinking(engine: LlamaEngine) -> None:
    call = ToolCall(function=ToolCallFunction(name="weather", arguments={"city": "Oslo"}))
    history = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(role="assistant", thinking="Ask the tool.", tool_calls=[call]),
        ChatMessage(role="tool", content="rain", tool_name="weather"),
    ]
    tool = {"type": "function", "function": {"name": "weather", "parameters": {}}}
    _, finish = await run(engine, job(kind="chat", messages=history, tools=[tool], think=False))
    assert prompt_of(finish) == (
        "<|im_start|>system\n"
        '{"type": "function", "function": {"name": "weather", "parameters": {}}}\n'
        "<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n<think>Ask the tool.</think>"
        '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call><|im_end|>\n'
        "<|im_start|>tool\nrain<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # thinking models think unless told not to
    _, thinking = await run(engine, job(kind="chat", messages=history[:1]))
    assert prompt_of(thinking).endswith("<|im_start|>assistant\n<think>")


async def test_suffix_is_filled_in_the_middle(engine: LlamaEngine) -> None:
    _, finish = await run(engine, job(prompt="the a", suffix="tea"))
    assert prompt_of(finish) == "<|fim_prefix|>the a<|fim_suffix|>tea<|fim_middle|>"
    assert finish.context is not None and finish.context[0] == 1  # BOS first


async def test_format_waits_for_the_end_of_thinking(engine: LlamaEngine) -> None:
    options = SamplingOptions(temperature=0, num_predict=12)
    messages = [ChatMessage(role="user", content="JSON please")]
    constrained, _ = await run(
        engine,
        job(kind="chat", messages=messages, format="json", think=False, options=options),
    )
    assert constrained.startswith("{")
    # while the model thinks (the prompt opened <think>), the format constrains nothing
    thinking, _ = await run(
        engine, job(kind="chat", messages=messages, format="json", options=options)
    )
    unconstrained, _ = await run(engine, job(kind="chat", messages=messages, options=options))
    assert "</think>" not in unconstrained  # so all of it is thinking
    assert thinking == unconstrained != constrained


async def test_a_prompt_that_opens_thinking_makes_the_answer_thinking(
    engine: LlamaEngine,
) -> None:
    options = SamplingOptions(temperature=0, num_predict=12)
    messages = [ChatMessage(role="user", content="JSON please")]
    request = job(kind="chat", messages=messages, options=options)  # the prompt ends in <think>
    pieces = [o async for o in engine.generate(request) if isinstance(o, Piece)]
    assert [p.thinking_opened for p in pieces] == [True] + [False] * (len(pieces) - 1)
    raw = "".join(p.text for p in pieces)
    assert raw.strip() and "</think>" not in raw  # the answer never closes the block
    [advert] = engine.models()
    post = Postprocessor.for_job(request, advert)
    chunks = [c for p in pieces for c in post.feed(p)] + post.finish()
    assert "".join(c.thinking for c in chunks) == raw.lstrip()
    assert "".join(c.text for c in chunks) == ""
    # told not to think, the template opens no block and the text is content
    unopened = job(kind="chat", messages=messages, options=options, think=False)
    assert not any(
        [o.thinking_opened async for o in engine.generate(unopened) if isinstance(o, Piece)]
    )


async def test_embeddings_of_a_causal_model(engine: LlamaEngine) -> None:
    result = await engine.embed(job(kind="embed", inputs=["the a", "tea", "the a"]))
    assert [len(v) for v in result.vectors] == [64, 64, 64]
    assert result.vectors[0] == pytest.approx(result.vectors[2], rel=1e-4)
    assert result.vectors[0] != pytest.approx(result.vectors[1], rel=1e-3)
    assert all(np.isfinite(v).all() for v in result.vectors)
    # embedding and generating share the context: generation goes on as before
    text, finish = await run(engine, job(prompt="the a"))
    again, _ = await run(engine, job(prompt="the a"))
    assert text == again and finish.n_decoded == 6


async def test_full_model_info(engine: LlamaEngine) -> None:
    info = engine.full_model_info(MODEL)
    assert len(info["tokenizer.ggml.tokens"]) == len(vocabulary())
    assert "tokenizer.chat_template" not in info
    # plain JSON values: a tuple, bytes or numpy value would not come back equal
    assert json.loads(json.dumps(info)) == info


def write_tiny_bert(path: Path, *, width: int = 32, ff: int = 64, context: int = 128) -> None:
    """A one-layer BERT embedding model (mean pooling, WordPiece vocabulary)."""
    rng = np.random.default_rng(1)
    words = ["▁the", "▁cat", "▁dog", "▁sat"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("tinybert")
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(ff)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(vocab)
    writer.add_token_types([gguf.TokenType.CONTROL] * 5 + [gguf.TokenType.NORMAL] * len(words))
    writer.add_unk_token_id(1)
    writer.add_bos_token_id(2)
    writer.add_sep_token_id(3)
    writer.add_eos_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_token_type_count(2)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    def norm(name: str, size: int) -> None:
        writer.add_tensor(f"{name}.weight", np.ones(size, np.float32))
        writer.add_tensor(f"{name}.bias", np.zeros(size, np.float32))

    tensor("token_embd.weight", len(vocab), width)
    tensor("token_types.weight", 2, width)
    tensor("position_embd.weight", context, width)
    norm("token_embd_norm", width)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        tensor(f"blk.0.{name}.weight", width, width)
        writer.add_tensor(f"blk.0.{name}.bias", np.zeros(width, np.float32))
    norm("blk.0.attn_output_norm", width)
    tensor("blk.0.ffn_up.weight", ff, width)
    writer.add_tensor("blk.0.ffn_up.bias", np.zeros(ff, np.float32))
    tensor("blk.0.ffn_down.weight", width, ff)
    writer.add_tensor("blk.0.ffn_down.bias", np.zeros(width, np.float32))
    norm("blk.0.layer_output_norm", width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


async def test_an_embedding_model(tmp_path: Path) -> None:
    write_tiny_bert(tmp_path / "bert.gguf")
    engine = LlamaEngine(
        [ModelSpec(name="bert:latest", path=tmp_path / "bert.gguf")], n_ctx=512, n_gpu_layers=0
    )
    await engine.start()
    try:
        [advert] = engine.models()
        assert advert.capabilities == ["embedding"]
        [status] = engine.loaded()
        assert status.context_length >= 128  # capped at the trained context (then padded)
        request = job(model="bert:latest", kind="embed", inputs=["the cat sat", "the dog", "the"])
        result = await engine.embed(request)
        assert [len(v) for v in result.vectors] == [32, 32, 32]
        assert result.n_prompt_tokens == 5 + 4 + 3  # [CLS] words [SEP]
        assert result.vectors[0] != pytest.approx(result.vectors[1], rel=1e-3)
        long = request.model_copy(update={"inputs": ["the cat " * 100]})
        assert (await engine.embed(long)).n_prompt_tokens == 128
        with pytest.raises(InvalidRequest, match="the input length exceeds the context length"):
            await engine.embed(long.model_copy(update={"truncate": False}))
        with pytest.raises(InvalidRequest, match='"bert:latest" does not support generate'):
            await run(engine, job(model="bert:latest", prompt="the cat"))
    finally:
        await engine.close()


async def test_a_continuation_generates_the_tokens_an_uninterrupted_run_does(
    engine: LlamaEngine,
) -> None:
    request = job(prompt="the a", options=SamplingOptions(temperature=0, num_predict=20))
    pieces: list[Piece] = []
    whole = None
    async for output in engine.generate(request):
        if isinstance(output, Piece):
            pieces.append(output)
        else:
            whole = output
    assert whole is not None and whole.context is not None and whole.n_decoded >= 4
    # every generated token rides on exactly one piece, in order
    answer = whole.context[whole.n_prompt_tokens :]
    assert [t for piece in pieces for t in piece.tokens] == answer
    # a worker died after half of them: another goes on from there
    resume = answer[: len(answer) // 2]
    _, finish = await run(engine, request.model_copy(update={"resume": resume}))
    assert finish.context == whole.context  # the same tokens, greedy, from the prompt on
    assert (finish.n_decoded, finish.n_prompt_tokens) == (whole.n_decoded, whole.n_prompt_tokens)
