"""Raw model text to thinking, content and tool calls."""

from __future__ import annotations

import re

import pytest

from shared.messages import GenerateJob, Logprob, ModelAdvert
from worker.engine import Piece
from worker.postprocess import Chunk, Postprocessor, thinks


def _run(pieces: list[str], *, thinking: bool = False, tools: bool = False) -> list[Chunk]:
    post = Postprocessor(thinking=thinking, tools=tools)
    chunks = [c for p in pieces for c in post.feed(Piece(p))]
    return chunks + post.finish()


def _text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def _thinking(chunks: list[Chunk]) -> str:
    return "".join(c.thinking for c in chunks)


def _calls(chunks: list[Chunk]) -> list[tuple[str, dict[str, object], int]]:
    return [
        (call.function.name, call.function.arguments, call.function.index)
        for chunk in chunks
        for call in chunk.tool_calls
    ]


def _split_everywhere(text: str) -> list[list[str]]:
    """The text cut in two at every position (tags split across pieces)."""
    return [[text[:i], text[i:]] for i in range(len(text) + 1)]


@pytest.mark.parametrize("pieces", _split_everywhere("<think>\nI ponder.\n</think>\n\nAnswer."))
def test_thinking_is_split_out_wherever_the_pieces_break(pieces: list[str]) -> None:
    chunks = _run(pieces, thinking=True)
    assert _thinking(chunks) == "I ponder."
    assert _text(chunks) == "Answer."


def test_thinking_streams_before_the_closing_tag() -> None:
    post = Postprocessor(thinking=True, tools=False)
    assert post.feed(Piece("<think>")) == []
    first = post.feed(Piece("step one "))
    assert _thinking(first) == "step one"  # the trailing space waits: the tag may follow
    assert _thinking(post.feed(Piece("</thi"))) == ""
    rest = post.feed(Piece("nk>Done")) + post.finish()
    assert _thinking(rest) == "" and _text(rest) == "Done"


def test_without_a_thinking_block_everything_is_content_untrimmed() -> None:
    chunks = _run(["  Plain", " answer <think>not at start</think>"], thinking=True)
    assert _thinking(chunks) == ""
    assert _text(chunks) == "  Plain answer <think>not at start</think>"


def test_thinking_off_passes_tags_through() -> None:
    chunks = _run(["<think>x</think>y"], thinking=False)
    assert _text(chunks) == "<think>x</think>y" and _thinking(chunks) == ""


def test_unclosed_thinking_stays_thinking() -> None:
    chunks = _run(["<think>cut off </thi"], thinking=True)
    assert _thinking(chunks) == "cut off </thi" and _text(chunks) == ""


@pytest.mark.parametrize("pieces", _split_everywhere("\nI ponder.\n</think>\n\nAnswer."))
def test_a_prompt_that_opened_thinking_makes_the_text_before_the_end_tag_thinking(
    pieces: list[str],
) -> None:
    post = Postprocessor(thinking=True, tools=False)
    first, rest = pieces
    chunks = post.feed(Piece(first, thinking_opened=True)) + post.feed(Piece(rest))
    chunks += post.finish()
    assert _thinking(chunks) == "I ponder." and _text(chunks) == "Answer."


def test_an_opened_block_is_content_when_thinking_is_off() -> None:
    post = Postprocessor(thinking=False, tools=False)
    chunks = post.feed(Piece("I ponder.</think>Answer.", thinking_opened=True)) + post.finish()
    assert _text(chunks) == "I ponder.</think>Answer." and _thinking(chunks) == ""


def test_who_thinks() -> None:
    job = GenerateJob(
        request_id="r", model="m", kind="chat", enqueued_at_ms=0, deadline_ms=1, think=None
    )
    thinker = ModelAdvert(name="m", capabilities=["completion", "thinking"])
    plain = ModelAdvert(name="m")
    assert thinks(job, thinker)  # thinking models think by default (Ollama >= 0.12.5)
    assert not thinks(job, plain)
    assert not thinks(job.model_copy(update={"think": False}), thinker)
    assert thinks(job.model_copy(update={"think": "high"}), thinker)


QWEN = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
)


@pytest.mark.parametrize("pieces", _split_everywhere(QWEN))
def test_qwen_tool_call_wherever_the_pieces_break(pieces: list[str]) -> None:
    chunks = _run(pieces, tools=True)
    assert _calls(chunks) == [("get_weather", {"city": "Paris", "days": 2}, 0)]
    assert _text(chunks) == ""
    call_chunks = [c for c in chunks if c.tool_calls]
    assert all(c.text == "" and c.thinking == "" for c in call_chunks)


def test_several_calls_are_numbered_and_have_ids() -> None:
    text = (
        'Let me check. <tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": "{\\"y\\": [1, 2]}"}</tool_call>'
    )
    chunks = _run([text], tools=True)
    assert _text(chunks) == "Let me check. "
    assert _calls(chunks) == [("a", {"x": 1}, 0), ("b", {"y": [1, 2]}, 1)]
    ids = [call.id for c in chunks for call in c.tool_calls]
    assert all(re.fullmatch(r"call_[a-z0-9]{8}", i) for i in ids) and len(set(ids)) == 2


def test_arguments_are_an_object_with_key_order_kept() -> None:
    chunks = _run(
        ['<tool_call>{"name": "f", "arguments": {"z": 1, "a": 2, "m": 3}}</tool_call>'], tools=True
    )
    arguments = chunks[-1].tool_calls[0].function.arguments
    assert isinstance(arguments, dict) and list(arguments) == ["z", "a", "m"]


@pytest.mark.parametrize(
    "text",
    [
        '[TOOL_CALLS][{"name": "search", "arguments": {"q": "herd"}}]',
        '[TOOL_CALLS]search[ARGS]{"q": "herd"}',
        '{"name": "search", "parameters": {"q": "herd"}}',
        ' \n[{"name": "search", "arguments": {"q": "herd"}}]',
        '{"type": "function", "function": {"name": "search", "arguments": {"q": "herd"}}}',
    ],
    ids=["mistral-json", "mistral-args", "bare-object", "bare-array", "openai-shape"],
)
def test_other_call_formats(text: str) -> None:
    for pieces in _split_everywhere(text):
        chunks = _run(pieces, tools=True)
        assert _calls(chunks) == [("search", {"q": "herd"}, 0)], pieces
        assert _text(chunks) == ""


def test_a_withheld_prefix_is_released_when_it_is_no_call() -> None:
    post = Postprocessor(thinking=False, tools=True)
    assert post.feed(Piece("{")) == []  # may open a bare call: withheld
    assert post.feed(Piece('"na')) == []
    released = post.feed(Piece('nny": 1}'))
    assert _text(released) == '{"nanny": 1}'  # its first key is no call's: out at once
    assert post.finish() == []


def test_a_partial_tag_is_held_then_released() -> None:
    post = Postprocessor(thinking=False, tools=True)
    out = post.feed(Piece("See <tool"))
    assert _text(out) == "See "  # "<tool" could open a call
    out = post.feed(Piece("s> are handy"))
    assert _text(out) == "<tools> are handy"


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>not json</tool_call> after",
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        "[TOOL_CALLS] no json here",
        "[TOOL_CALLS]search[ARGS] nope",
        '{"name": "f", "arguments": {',  # never finished
        '{"reply": "json, but no call"}',
        "[1] a list",
    ],
)
def test_markup_that_does_not_parse_passes_as_text(text: str) -> None:
    chunks = _run([text], tools=True)
    assert _text(chunks) == text
    assert _calls(chunks) == []


def test_tools_off_leaves_markup_alone() -> None:
    chunks = _run([QWEN], tools=False)
    assert _text(chunks) == QWEN and _calls(chunks) == []


def test_thinking_then_a_call() -> None:
    chunks = _run(["<think>Need weather.</think>", QWEN], thinking=True, tools=True)
    assert _thinking(chunks) == "Need weather."
    assert _calls(chunks) == [("get_weather", {"city": "Paris", "days": 2}, 0)]
    # the call comes after the thinking, on its own chunk
    assert chunks[-1].tool_calls and not chunks[0].tool_calls


def test_logprobs_follow_their_text_even_when_held_back() -> None:
    post = Postprocessor(thinking=False, tools=True)
    first = Logprob(token="{", logprob=-0.5)
    second = Logprob(token="x", logprob=-0.1)
    assert post.feed(Piece("{", [first])) == []
    out = post.feed(Piece("x", [second]))  # "{x" is no call: released with both logprobs
    assert _text(out) == "{x" and out[0].logprobs == [first, second]
    assert post.finish() == []


def test_logprobs_of_a_call_are_not_lost() -> None:
    post = Postprocessor(thinking=False, tools=True)
    chunks = post.feed(Piece(QWEN, [Logprob(token="t", logprob=-1.0)])) + post.finish()
    assert [lp.token for c in chunks for lp in c.logprobs] == ["t"]
