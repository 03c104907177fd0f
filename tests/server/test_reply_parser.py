"""The reply parser on hand-made chunks: one delta per kind per chunk (text held back at a
possible stop string comes with the chunk that releases it), the same text in the same
order, tool calls as before, and token counts that add up to the tokens generated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rkllm_sdk import Chunk, ToolCall
from rkllm_sdk.server.chat_types import ChatDelta
from rkllm_sdk.server.reply_parser import ReplyParser

THINK = ("<think>", "</think>")
END = "<|im_end|>"  # Qwen's end of turn: 10 characters, so 9 are held back


def parser(**kw: Any) -> ReplyParser:
    """A parser as the engine makes one for a Qwen-style template (think tags, its end of
    turn as a stop string), reasoning shown, no tools; ``kw`` overrides."""
    options: dict[str, Any] = {
        "think_tags": THINK,
        "in_think": False,
        "stops": (END,),
        "limit": None,
        "show_reasoning": True,
        "tools": False,
    }
    return ReplyParser(**{**options, **kw})


def chunks(*texts: str) -> list[Chunk]:
    """One chunk (one token) per text, then the run's last chunk (no text, no token)."""
    out = [Chunk(seq, text, (seq,)) for seq, text in enumerate(texts)]
    return [*out, Chunk(len(out), "", (), finish_reason="stop")]


def run(p: ReplyParser, items: Sequence[Chunk]) -> list[list[ChatDelta]]:
    """Feed every chunk, then end: the deltas of each call (the end's last)."""
    return [*(p.feed(c) for c in items), p.end()]


def kinds(deltas: Sequence[ChatDelta]) -> list[str]:
    """Each delta's kind."""
    return [
        "tool_calls" if d.tool_calls else "reasoning" if d.reasoning else "content" for d in deltas
    ]


def text_of(deltas: Sequence[ChatDelta], kind: str) -> str:
    """The text of one kind, joined."""
    return "".join(d.reasoning if kind == "reasoning" else d.content for d in deltas)


def test_held_back_text_and_the_new_token_come_as_one_delta() -> None:
    """A token that releases held-back text of its own kind gives one delta, not one per
    held piece ("Hel" + "lo" used to be two deltas); the end's drain is one delta too."""
    p = parser()
    calls = run(p, chunks("Hel", "lo", " wor", "ld", ",", " nice", " to", " see", " you"))
    assert all(len(c) <= 1 for c in calls)
    flat = [d for c in calls for d in c]
    assert text_of(flat, "content") == "".join(p.content) == "Hello world, nice to see you"
    assert calls[-1] == [
        ChatDelta(content="o see you", tokens=1)
    ]  # the drain counts the last token
    assert sum(d.tokens for d in flat) == p.tokens == 9


def test_one_chunk_of_reasoning_and_content_gives_one_delta_of_each() -> None:
    """A chunk closing the think block gives the reasoning, then the content, in that order;
    the last counts the chunk's token, the first none (each token is counted once)."""
    p = parser(stops=())
    calls = run(p, chunks("<think>", "Let me see", ".</think>Hi", " there"))
    assert [kinds(c) for c in calls] == [
        [],
        ["reasoning"],
        ["reasoning", "content"],
        ["content"],
        [],
        [],
    ]
    assert calls[2] == [ChatDelta(reasoning="."), ChatDelta(content="Hi", tokens=1)]
    assert calls[1][0].tokens == 2  # the think tag's token counts with the next delta
    assert p.reasoning == ["Let me see", "."] and "".join(p.content) == "Hi there"


def test_reasoning_and_content_released_together_stay_in_order() -> None:
    """Held-back reasoning released with the first content: one reasoning delta, then one
    content delta, never two of a kind from one chunk, whatever the hold-back split."""
    p = parser()
    calls = run(p, chunks("<think>", "Let", " me", " think", ".", "</think>", "Hello", " world"))
    for c in calls:
        assert len(c) == len(set(kinds(c)))  # at most one per kind
    flat = [d for c in calls for d in c]
    assert text_of(flat, "reasoning") == "Let me think."
    assert text_of(flat, "content") == "Hello world"
    assert kinds(flat) == sorted(kinds(flat), key=["reasoning", "content"].index)
    assert sum(d.tokens for d in flat) == 8


def test_a_stop_string_cuts_and_counts_its_tokens() -> None:
    """A stop string across chunks: the text before it comes as one delta counting every
    token up to the stop; nothing after it, and the end adds nothing."""
    p = parser(stops=(END, "STOP"))
    calls = run(p, chunks("one", " two", " ST", "OP", " three"))
    flat = [d for c in calls for d in c]
    assert text_of(flat, "content") == "one two " and p.finish == "stop"
    assert sum(d.tokens for d in flat) == p.shown_tokens == 4
    assert calls[-1] == [] and calls[-2] == []


def test_tool_calls_are_unchanged_and_count_their_block() -> None:
    """A <tool_call> block flushes the held text, then its calls come as their own delta,
    which counts the block's tokens."""
    call = ToolCall(name="set_light", arguments={"on": True}, id="call_0")
    p = parser(tools=True)
    items = [
        Chunk(0, "Sure", (0,)),
        Chunk(1, "<tool_call>", (1,), in_tool_call=True),
        Chunk(2, '{"name": "set_light"}', (2,), in_tool_call=True),
        Chunk(3, "</tool_call>", (3,), in_tool_call=True, tool_calls=(call,)),
        Chunk(4, "", (), finish_reason="stop"),
    ]
    calls = run(p, items)
    assert calls[0] == []  # held back: it might start the end of turn
    assert calls[1] == [ChatDelta(content="Sure", tokens=2)]
    assert calls[3] == [ChatDelta(tool_calls=(call,), tokens=2)]
    assert p.tool_calls == [call] and calls[-1] == []


def test_a_bare_json_reply_counts_its_tokens_when_it_ends() -> None:
    """Llama 3's bare JSON call is held back to the end, where its delta counts its tokens."""
    p = parser(stops=("<|eot_id|>",), think_tags=None, tools=True, tool_names=frozenset({"f"}))
    calls = run(p, chunks('{"name": ', '"f", ', '"parameters": {}}'))
    assert all(c == [] for c in calls[:-1])
    ((delta,),) = calls[-1:]
    assert [c.name for c in delta.tool_calls] == ["f"] and delta.tokens == 3


def test_hidden_reasoning_counts_with_the_content() -> None:
    """With reasoning not shown, its tokens count with the first content delta."""
    p = parser(stops=(), show_reasoning=False)
    calls = run(p, chunks("<think>", "hmm", "</think>", "Yes"))
    assert [d for c in calls for d in c] == [ChatDelta(content="Yes", tokens=4)]


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab <>/thinkSTOP|_m", max_size=60),
    cuts=st.lists(st.integers(1, 8), max_size=60),
    in_think=st.booleans(),
)
def test_any_chunking_keeps_the_text_and_gives_one_delta_per_kind(
    text: str, cuts: list[int], in_think: bool
) -> None:
    """However a reply is cut into chunks: each chunk gives at most one delta per kind, the
    text of each kind is the parser's (same text, same order as before merging), consecutive
    deltas of one call differ in kind, and the counts never exceed the tokens shown, reach
    them within one when a call gives deltas."""
    pieces, i = [], 0
    for n in [*cuts, len(text)]:
        if i < len(text):
            pieces.append(text[i : i + n])
            i += n
    p = parser(stops=("STOP", "<|im"), in_think=in_think)
    told = 0
    flat: list[ChatDelta] = []
    for chunk in chunks(*pieces):
        out = p.feed(chunk)
        assert all(a != b for a, b in zip(kinds(out), kinds(out)[1:], strict=False))
        assert all(d.tokens == 0 for d in out[:-1])
        told += sum(d.tokens for d in out)
        assert told <= p.shown_tokens
        if out and p.finish != "stop":  # one stays untold only while text is held back
            assert told >= p.shown_tokens - 1
        flat += out
    flat += p.end()
    assert text_of(flat, "content") == "".join(p.content)
    assert text_of(flat, "reasoning") == "".join(p.reasoning)
    assert sum(d.tokens for d in flat) <= p.shown_tokens
    if p.finish is None:
        assert sum(d.tokens for d in flat) == p.shown_tokens or not flat
