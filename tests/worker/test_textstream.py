from __future__ import annotations

from worker.textstream import TextStream


def test_split_utf8_character_is_held_until_complete() -> None:
    stream = TextStream([])
    data = "é".encode()
    assert stream.feed(data[:1]) == ""
    assert stream.feed(data[1:]) == "é"
    assert stream.finish() == ""


def test_stop_string_across_tokens_is_never_emitted() -> None:
    stream = TextStream(["<end_of_turn>"])
    out = [stream.feed(piece.encode()) for piece in ["Hi", " there<end", "_of", "_turn>", "x"]]
    assert "".join(out) == "Hi there"
    assert stream.stopped
    assert stream.finish() == ""


def test_a_false_start_of_a_stop_string_is_released() -> None:
    stream = TextStream(["STOP"])
    assert stream.feed(b"ab ST") == "ab "
    assert stream.feed(b"AY") == "STAY"
    assert not stream.stopped


def test_finish_flushes_held_text() -> None:
    stream = TextStream(["END"])
    assert stream.feed(b"the EN") == "the "
    assert stream.finish() == "EN"
