"""rkllm_fake_kv_text: the bytes each KV position stands for, through every KV operation;
and thinking under a custom template (A9)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest

from .conftest import ModelFactory
from .driver import Driver, Handle, reference_pieces, reference_token_id
from .test_kv_cache import clear

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
REPLY = "alpha beta gamma delta epsilon zeta"  # ASCII: each callback's text is its token's bytes


def turn(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def scripted(model: ModelFactory, **fields: object) -> Path:
    return model(script=[{"match": "", "reply": REPLY}], **fields)


def pausing(drv: Driver, path: Path, at: int) -> tuple[Handle, list[bool]]:
    """A handle whose callback number `at` of the next run armed with arm[0] returns 1."""
    arm = [False]
    first: list[int] = []

    def reply(i: int, event: object) -> int:
        if not arm[0]:
            return 0
        if not first:
            first.append(i)
        if i - first[0] == at:
            arm[0] = False
            first.clear()
            return 1
        return 0

    return drv.init(path, reply=reply), arm


def test_one_keep_history_run_holds_prompt_and_reply(drv: Driver, model: ModelFactory) -> None:
    """After a keep_history run: the templated prompt, then every generated token's bytes."""
    h = drv.init(scripted(model))
    run = h.run("hello", keep_history=1)
    assert run.text() == REPLY
    assert h.kv_text() == (SYSTEM + turn("hello") + REPLY).encode()
    assert h.kv_sizes() == [len(reference_pieces(SYSTEM + turn("hello"))) + len(run.tokens)]


def test_two_keep_history_runs_concatenate(drv: Driver, model: ModelFactory) -> None:
    """A second turn appends its prompt (no system prompt again) and its reply; no EOS between."""
    h = drv.init(scripted(model))
    h.run("one", keep_history=1)
    h.run("two", keep_history=1)
    assert h.kv_text() == (SYSTEM + turn("one") + REPLY + turn("two") + REPLY).encode()


def test_single_turn_runs_leave_nothing(drv: Driver, model: ModelFactory) -> None:
    """keep_history=0 empties the cache before and after the run (A14)."""
    h = drv.init(scripted(model))
    h.run("one", keep_history=1)
    h.run("two", keep_history=0)
    assert h.kv_text() == b""


def test_generated_text_is_every_token_not_only_what_callbacks_carried(
    drv: Driver, model: ModelFactory
) -> None:
    """Generated sentences (CJK, emoji cut inside characters) are in the cache byte for byte."""
    h = drv.init(model())
    run = h.run("tell me", keep_history=1)
    assert h.kv_text() == (SYSTEM + turn("tell me")).encode() + run.raw_bytes()


def test_clear_whole_and_keeping_the_system_prompt(drv: Driver, model: ModelFactory) -> None:
    """rkllm_clear_kv_cache: keep_system_prompt leaves exactly the system part; else nothing."""
    h = drv.init(scripted(model))
    h.run("hello", keep_history=1)
    assert clear(drv, h, keep_system=1) == 0
    assert h.kv_text() == SYSTEM.encode()
    h.run("again", keep_history=1)
    assert h.kv_text() == (SYSTEM + turn("again") + REPLY).encode()
    assert clear(drv, h, keep_system=0) == 0
    assert h.kv_text() == b""


def test_custom_template_parts_and_raw_text(drv: Driver, model: ModelFactory) -> None:
    """Under set_chat_template the cache holds the custom parts; with "" parts the raw text."""
    h = drv.init(scripted(model))
    assert h.set_template("SYS|", "[U]", "[/U]") == 0
    h.run("x", keep_history=1)
    assert h.kv_text() == ("SYS|[U]x[/U]" + REPLY).encode()
    assert clear(drv, h) == 0
    assert h.set_template("", "", "") == 0
    h.run("<|im_start|>user\nraw<|im_end|>\n", keep_history=1)
    assert h.kv_text() == ("<|im_start|>user\nraw<|im_end|>\n" + REPLY).encode()


def test_pause_keeps_what_was_decoded_and_the_next_run_appends(
    drv: Driver, model: ModelFactory
) -> None:
    """A paused keep_history=0 run keeps its prompt and the tokens so far; a range then goes."""
    h, arm = pausing(drv, scripted(model), at=2)
    arm[0] = True
    run = h.run("hello", keep_history=0)
    assert len(run.tokens) == 3
    held = (SYSTEM + turn("hello")).encode() + run.raw_bytes()
    assert h.kv_text() == held == (SYSTEM + turn("hello") + "alpha beta gamma").encode()
    pieces = reference_pieces(held)
    assert h.kv_sizes() == [len(pieces)]
    assert clear(drv, h, ranges=[(2, 5)]) == 0
    assert h.kv_text() == b"".join(pieces[:2] + pieces[5:])
    arm[0] = True
    h.run("more", keep_history=0)
    assert h.kv_text().startswith(b"".join(pieces[:2] + pieces[5:]) + turn("more").encode())


def test_context_shift_drops_the_middle(drv: Driver, model: ModelFactory) -> None:
    """A15: positions after the kept system prompt go, oldest first; their text with them."""
    h = drv.init(
        scripted(model, natural_end=False, waiting_text="partial"),
        max_context_len=48,
        max_new_tokens=40,
        n_keep=-1,
    )
    run = h.run("hello", keep_history=1)
    assert len(run.tokens) == 40
    assert drv.stats()["kv_shifts"] > 0
    positions = reference_pieces(SYSTEM + turn("hello")) + [
        e.items[0].text or b"" for e in run.tokens
    ]
    sys_n = len(reference_pieces(SYSTEM))
    (n,) = h.kv_sizes()
    dropped = len(positions) - n
    assert dropped > 0
    assert h.kv_text() == b"".join(positions[:sys_n] + positions[sys_n + dropped :])


def test_prompt_cache_reuse_keeps_the_text(
    tmp_path: Path, drv: Driver, model: ModelFactory
) -> None:
    """A prompt cache saved with its text: the reused prefix and the rest read back exactly."""
    h = drv.init(scripted(model))
    path = tmp_path / "p.cache"
    h.run("shared prefix then one", keep_history=0, save_cache=str(path))
    assert path.read_bytes().startswith(b"RKFKPC02")
    assert drv.lib.rkllm_load_prompt_cache(h.ptr, str(path).encode()) == 0
    run = h.run("shared prefix then two", keep_history=1)
    perf = run.terminal.items[0].perf
    prompt = SYSTEM + turn("shared prefix then two")
    assert perf["prefill_tokens"] < len(reference_pieces(prompt))
    assert h.kv_text() == (prompt + REPLY).encode()


def test_prompt_cache_version_1_files_still_load(
    tmp_path: Path, drv: Driver, model: ModelFactory
) -> None:
    """An old ids-only file ("RKFKPC01") loads; reuse follows the ids, the text the input's."""
    h = drv.init(scripted(model))
    h.run("warm", keep_history=1)
    prefix = SYSTEM + turn("warm")
    n = h.last_input()["inputs"][0]["prefill_tokens"]
    token_ids = [reference_token_id(piece, 4096) for piece in reference_pieces(prefix)]
    assert len(token_ids) == n
    path = tmp_path / "v1.cache"
    path.write_bytes(b"RKFKPC01" + struct.pack(f"<I{n}i", n, *token_ids))
    assert clear(drv, h) == 0
    assert drv.lib.rkllm_load_prompt_cache(h.ptr, str(path).encode()) == 0
    run = h.run("warm", keep_history=1)
    assert run.terminal.items[0].perf["prefill_tokens"] == 1
    assert h.kv_text() == (prefix + REPLY).encode()


def test_token_and_embedding_inputs_show_placeholders(drv: Driver, model: ModelFactory) -> None:
    """Token inputs read <token:ID> per id, embedding rows <embed> per row, then the reply."""
    h = drv.init(scripted(model))
    keep: list[object] = []
    ids = np.array([7, 1234], dtype=np.int32)
    run = h.collect(h.tokens(ids, keep), h.infer(keep, keep_history=1))
    assert run.raw_bytes().startswith(b"[tokens n=2 fnv=") and run.text().endswith(REPLY)
    assert h.kv_text() == b"<token:7><token:1234>" + run.raw_bytes()
    assert clear(drv, h) == 0
    rows = np.ones((3, 16), dtype=np.float32)
    run = h.collect(h.embed(rows, keep), h.infer(keep, keep_history=1))
    assert h.kv_text() == b"<embed>" * 3 + run.raw_bytes()


def test_hidden_state_mode_holds_the_prefill(drv: Driver, model: ModelFactory) -> None:
    """GET_LAST_HIDDEN_LAYER with keep_history: the prompt is in the cache, nothing generated."""
    h = drv.init(scripted(model))
    h.run("embed me", keep_history=1, mode=1)
    assert h.kv_text() == (SYSTEM + turn("embed me")).encode()


def test_batches_bad_arguments_and_short_buffers(drv: Driver, model: ModelFactory) -> None:
    """Each batch has its own text; a bad batch or handle is -1; a short buffer is cut, the
    full length returned."""
    h = drv.init(scripted(model), extend={"n_batch": 2})
    keep: list[object] = []
    h.batch([h.prompt("a", keep), h.prompt("b", keep)], h.infer(keep, keep_history=1))
    assert h.kv_text(0) == (SYSTEM + turn("a") + REPLY).encode()
    assert h.kv_text(1) == (SYSTEM + turn("b") + REPLY).encode()
    assert drv.lib.rkllm_fake_kv_text(h.ptr, 2, drv.ffi.NULL, 0) == -1
    assert drv.lib.rkllm_fake_kv_text(h.ptr, -1, drv.ffi.NULL, 0) == -1
    bad = drv.ffi.cast("void*", 12345)
    assert drv.lib.rkllm_fake_kv_text(bad, 0, drv.ffi.NULL, 0) == -1
    buf = drv.ffi.new("char[]", 5)
    full = len(h.kv_text(0))
    assert drv.lib.rkllm_fake_kv_text(h.ptr, 0, buf, 5) == full
    assert drv.ffi.string(buf) == SYSTEM.encode()[:4]


# ---- A9: thinking under a custom template -------------------------------------------------

THOUGHT = re.compile(r"[^<>]+\n</think>\n\n\S", re.S)


@pytest.mark.parametrize(
    "end",
    ["<think>\n\n</think>\n\n", "<think>\n\n</think>", "<think></think>\n \n", "<think>\n</think>"],
)
def test_an_empty_closed_think_block_means_no_thinking(
    drv: Driver, model: ModelFactory, end: str
) -> None:
    """A prompt ending with an empty closed think block (Qwen3, thinking off): no thinking."""
    h = drv.init(model(thinking=True))
    assert h.set_template("", "", "") == 0
    text = h.run(turn("ponder") + end, thinking=True).text()
    assert "<think>" not in text and "</think>" not in text


@pytest.mark.parametrize("end", ["<think>\n", "<think>"])
def test_an_open_think_block_continues_inside_it(
    drv: Driver, model: ModelFactory, end: str
) -> None:
    """A prompt ending with an open <think> (DeepSeek-R1): thought, </think>, the answer; no
    opening tag, and a newline first when the prompt did not end with one."""
    h = drv.init(model(thinking=True))
    assert h.set_template("", "", "") == 0
    prompt = turn("ponder") + end
    text = h.run(prompt, keep_history=1).text()
    assert "<think>" not in text
    assert text.startswith("\n") == (end == "<think>")
    assert THOUGHT.match(text.lstrip("\n"))
    kv = h.kv_text().decode()
    assert kv == prompt + text
    assert re.fullmatch(r"(?s).*<think>\n[^<>]+\n</think>\n\n\S.*", kv)


@pytest.mark.parametrize("end", ["", "<think>\nI thought.\n</think>\n\n", "</think>\n\n"])
def test_otherwise_a_custom_template_thinks(drv: Driver, model: ModelFactory, end: str) -> None:
    """Anything else under a custom template: a fresh think block, whatever enable_thinking."""
    h = drv.init(model(thinking=True))
    assert h.set_template("", "", "") == 0
    assert h.run("ponder" + end, thinking=False).text().startswith("<think>\n")


def test_prompt_endings_do_not_make_other_models_think(drv: Driver, model: ModelFactory) -> None:
    """A model without thinking never thinks; the default template still follows the flag."""
    plain = drv.init(model())
    assert plain.set_template("", "", "") == 0
    assert "think>" not in plain.run(turn("ponder") + "<think>\n").text()
    thinker = drv.init(model(thinking=True))
    assert "<think>" not in thinker.run("ponder <think>\n", thinking=False).text()


def test_tokenizer_callback_ids_carry_the_whole_text_on_the_first(
    drv: Driver, model: ModelFactory
) -> None:
    """1.3 without an internal tokenizer: which bytes each returned id covers is unknown, so
    the first of them holds the whole templated text and the others none."""
    if drv.abi != "1.3":
        pytest.skip("tokenizer callbacks exist in runtime 1.3 only")

    def tokenizer(_ud: object, text: object, n: int, tokens: object, cap: int) -> int:
        for k in range(4):
            tokens[k] = 10 + k
        return 4

    h = drv.init(scripted(model, internal_tokenizer=False), tokenizer=tokenizer)
    run = h.run("hello", keep_history=1)
    assert h.kv_text() == (SYSTEM + turn("hello")).encode() + run.raw_bytes()
    assert h.kv_sizes() == [4 + len(run.tokens)]
    assert clear(drv, h, keep_system=1) == 0  # the system part is at most the prompt's ids
    assert h.kv_sizes()[0] <= 4
    assert h.kv_text() in (b"", (SYSTEM + turn("hello")).encode())
