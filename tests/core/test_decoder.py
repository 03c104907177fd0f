"""The pure decoder: drained runtime events in, chunks and generations out (no runtime)."""

from __future__ import annotations

import time
from typing import NamedTuple

import anyio
import numpy as np
import pytest

from rkllm_sdk._decoder import COMPACT_EVERY, Decoder
from rkllm_sdk.arrays import FloatArray
from rkllm_sdk.results import Chunk, Generation, PerfStats

NORMAL, WAITING, FINISH, ERROR = 0, 1, 2, 3
PERF = PerfStats(
    prefill_time_ms=1.0, prefill_tokens=2, generate_time_ms=3.0, generate_tokens=4,
    memory_usage_mb=5.0,
)  # fmt: skip


class Events(NamedTuple):
    """One drain, as the bridge's channel gives it (parallel columns)."""

    states: list[int]
    batches: list[int]
    token_ids: list[int]
    texts: list[bytes | None]
    callback_ns: list[int]
    arrays: dict[int, FloatArray]


def events(*items: tuple[int, int, bytes | None], batch: int = 0) -> Events:
    """(state, token id, text) triples of one batch entry."""
    return Events(
        states=[s for s, _, _ in items],
        batches=[batch] * len(items),
        token_ids=[t for _, t, _ in items],
        texts=[x for _, _, x in items],
        callback_ns=[time.monotonic_ns() + i for i in range(len(items))],  # the bridge's clock
        arrays={},
    )


def finish(decoder: Decoder, *, failed: bool = False) -> list[Generation]:
    return anyio.run(lambda: decoder.finish([PERF], failed=failed))


def texts(decoder: Decoder) -> list[str]:
    return [c.text for c in decoder.chunks]


# The reply "ab 你好" cut into pieces the two ways a runtime may deliver a split character.
HELD = [
    (NORMAL, 1, b"ab "),
    (WAITING, 2, None),
    (NORMAL, 3, "你".encode()),
    (NORMAL, 4, "好".encode()),
]
PARTIAL = [(NORMAL, 1, b"ab "), (WAITING, 2, b"\xe4\xbd"), (NORMAL, 3, b"\xa0\xe5\xa5\xbd")]


@pytest.mark.parametrize("pieces", [HELD, PARTIAL], ids=["held", "partial"])
def test_text_is_whole_characters_under_both_waiting_readings(
    pieces: list[tuple[int, int, bytes | None]],
) -> None:
    """WAITING with no text, or with the first bytes of a character: same text, same ids,
    never half a character in a chunk."""
    d = Decoder(1)
    d.process(events(*pieces))
    chunks = list(d.chunks)
    assert "".join(c.text for c in chunks) == "ab 你好"
    assert all("\ufffd" not in c.text for c in chunks)
    assert [i for c in chunks for i in c.token_ids] == [t for _, t, _ in pieces]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    (gen,) = finish(d)
    assert gen.text == "ab 你好" and gen.token_ids == tuple(t for _, t, _ in pieces)


def test_a_run_cut_inside_a_character_drops_its_incomplete_bytes() -> None:
    """A run that ends after the first bytes of a character ends its text before it: no U+FFFD."""
    d = Decoder(1, limit=2)
    d.process(events((NORMAL, 1, b"ab "), (WAITING, 2, b"\xe4\xbd")))
    (gen,) = finish(d)
    assert gen.text == "ab " and gen.finish_reason == "length"
    assert [c.text for c in d.chunks] == ["ab ", ""]
    assert d.chunks[-1].token_ids == (2,)  # the cut token still belongs to the reply


def test_a_plain_string_is_one_stop_sequence() -> None:
    """stop="User:" ends the reply at "User:", not at its first letter; the rest is trimmed
    and the stream is asked to abort once."""
    stops: list[str] = []
    d = Decoder(1, stop="User:", on_stop=lambda: stops.append("abort"))
    d.process(events((NORMAL, 1, b"Use it. "), (NORMAL, 2, b"Us"), (NORMAL, 3, b"er: more")))
    (gen,) = finish(d)
    assert gen.text == "Use it. " and gen.finish_reason == "stop"
    assert stops == ["abort"] and d.abort_reason == "stop"


def test_stop_strings_are_held_back_across_pieces_and_released_when_they_do_not_match() -> None:
    """The last len(stop) - 1 characters wait (they could begin a stop string); text before
    them is released in order, and the rest at the end of the run."""
    d = Decoder(1, stop=["\n\nUser"])
    d.process(events((NORMAL, 1, b"a\n"), (NORMAL, 2, b"\nb")))
    assert "".join(texts(d)) == ""  # "a\n\nb" could still become "a\n\nUser"
    d.process(events((NORMAL, 3, b"cdefg")))
    assert "".join(texts(d)) == "a\n\nb"  # "cdefg" is held: 5 = len("\n\nUser") - 1
    (gen,) = finish(d)
    assert gen.text == "a\n\nbcdefg" and gen.finish_reason == "stop"


def test_thinking_and_tool_call_blocks_are_marked_and_calls_parsed_as_they_close() -> None:
    """<think> text is marked thinking; a <tool_call> block is marked and its calls ride on
    the chunk that closes it; the run ends with "tool_calls"."""
    d = Decoder(1)
    d.process(
        events(
            (NORMAL, 1, b"<think>hm"),
            (NORMAL, 2, b"</think>"),
            (NORMAL, 3, b"ok <tool_call>\n"),
            (NORMAL, 4, b'{"name": "f", "arguments": {"x": 1}}\n</tool_call>'),
        )
    )
    chunks: list[Chunk] = list(d.chunks)
    assert [c.thinking for c in chunks] == [True, True, False, False]
    assert [c.in_tool_call for c in chunks] == [False, False, True, True]
    assert [len(c.tool_calls) for c in chunks] == [0, 0, 0, 1]
    call = chunks[3].tool_calls[0]
    assert (call.name, call.arguments, call.error) == ("f", {"x": 1}, None)
    (gen,) = finish(d)
    assert gen.finish_reason == "tool_calls" and gen.tool_calls == (call,)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [("none", "stop"), ("limit", "length"), ("abort", "abort"), ("pause", "pause")],
)
def test_finish_reasons(setup: str, reason: str) -> None:
    """Each way a run ends gives its FinishReason on the last chunk and the Generation."""
    d = Decoder(1, limit=2 if setup == "limit" else None)
    if setup in ("abort", "pause"):
        d.request_stop(setup)  # type: ignore[arg-type]
    d.process(events((NORMAL, 1, b"a"), (NORMAL, 2, b"b"), (FINISH, -1, None)))
    (gen,) = finish(d)
    assert gen.finish_reason == reason
    assert d.chunks[-1].finish_reason == reason and d.chunks[-1].perf == PERF
    assert d.terminal_state == FINISH


def test_a_failed_run_gets_no_final_chunk() -> None:
    """After an error the generation says "error" and no final chunk is queued (the stream
    raises GenerationError instead)."""
    d = Decoder(1)
    d.process(events((NORMAL, 1, b"a"), (ERROR, -1, None)))
    (gen,) = finish(d, failed=True)
    assert gen.finish_reason == "error" and gen.text == "a"
    assert texts(d) == ["a"] and d.terminal_state == ERROR


def test_batches_are_decoded_apart() -> None:
    """Events of two batch entries build two generations; a negative token ends an entry."""
    d = Decoder(2)
    merged = Events(
        states=[NORMAL, NORMAL, NORMAL, NORMAL],
        batches=[0, 1, 0, 1],
        token_ids=[1, 7, 2, -1],
        texts=[b"a", b"x", b"b", None],
        callback_ns=[0, 0, 1, 1],
        arrays={},
    )
    d.process(merged)
    gens = anyio.run(lambda: d.finish([PERF, PERF], failed=False))
    assert [(g.batch, g.text, g.token_ids) for g in gens] == [(0, "ab", (1, 2)), (1, "x", (7,))]


def test_arrays_are_kept_per_batch_and_concatenated() -> None:
    """Logits rows delivered in several callbacks come back as one array, in order."""
    d = Decoder(1, measure=True)
    rows = [np.full((1, 3), float(i), dtype=np.float32) for i in range(2)]
    for i, row in enumerate(rows):
        d.process(Events([NORMAL], [0], [i], [b""], [100 + i], {0: row}))
    assert d.arrays(0).tolist() == [[0.0] * 3, [1.0] * 3]
    assert d.array_callback_ns == [100, 101]
    assert Decoder(1).array_callback_ns is None  # only measured when asked


def test_long_text_is_folded_without_losing_pieces() -> None:
    """Past COMPACT_EVERY pieces the text is folded into blocks; the result is exact."""
    d = Decoder(1)
    n = 2 * COMPACT_EVERY + 5
    d.process(events(*[(NORMAL, i, str(i % 10).encode()) for i in range(n)]))
    (gen,) = finish(d)
    assert gen.text == "".join(str(i % 10) for i in range(n)) and len(gen.token_ids) == n


def test_an_abort_or_pause_asked_after_the_run_ended_does_not_change_its_reason() -> None:
    """A stop asked for after the runtime's terminal callback (a late abort / pause) leaves
    the run's own reason ("stop"): the runtime had finished by itself."""
    d = Decoder(1)
    d.process(events((NORMAL, 1, b"a"), (FINISH, -1, None)))
    d.request_stop("pause")  # after the terminal callback
    assert d.abort_reason == "pause"
    (gen,) = finish(d)
    assert gen.finish_reason == "stop"
    early = Decoder(1)
    early.request_stop("abort")
    late_stamp = time.monotonic_ns() + 10**9
    early.process(Events([NORMAL, FINISH], [0, 0], [1, -1], [b"a", None], [0, late_stamp], {}))
    assert finish(early)[0].finish_reason == "abort"
