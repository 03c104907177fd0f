"""Fixes of issue #11 (CLI items), each run as a subprocess on the fake runtime."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_cli import env, fake_args, rkllm
from tests.conftest import ModelFactory

INT32_MAX = 2**31 - 1


@pytest.mark.parametrize(
    ("command", "option", "value", "top"),
    [
        ("run", "--max-new-tokens", "99999999999", INT32_MAX),
        ("chat", "--max-new-tokens", str(INT32_MAX + 1), INT32_MAX),
        ("bench", "--runs", str(INT32_MAX + 1), INT32_MAX),
        ("bench", "--prompt-tokens", "1048577", 1048576),
        ("bench", "--new-tokens", "-1", 1048576),
    ],
)
def test_int_options_out_of_range_are_usage_errors(
    command: str, option: str, value: str, top: int
) -> None:
    """An int option beyond its range is one line naming the option and range, exit 2."""
    args = [command, "hi"] if command == "run" else [command]
    r = rkllm(*args, option, value, "--runtime", "fake", stdin="")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"rkllm {command}: error: argument {option}: must be from 1 to {top}: {value}"
    )


def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            seen += os.read(fd, 4096)
    assert needle in seen, bytes(seen)


def test_sigint_in_a_second_chat_answer_stops_only_that_answer(model: ModelFactory) -> None:
    """Ctrl-C in the second answer stops it too; the chat still answers, and /exit gives 0."""
    script = [{"match": "go", "reply": "word " * 400}, {"match": "hi", "reply": "Hi."}]
    m = model(decode_ms=20, script=script)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rkllm_sdk", "chat", *fake_args("1.3", m)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = bytearray()
    for _ in range(2):
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        _read_until(proc.stdout.fileno(), b"word", out)
        proc.send_signal(signal.SIGINT)
        _read_until(proc.stdout.fileno(), b"\nyou> ", out)
        assert out.count(b"\nyou> ") == 1  # the chat is back at its prompt
        del out[:]
    proc.stdin.write(b"hi\n/exit\n")
    proc.stdin.flush()
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert (bytes(out) + rest).decode() == "assistant> Hi.\nyou> \n"
    assert err.decode().count("stopped") == 2


def test_chat_reads_files_and_dev_null_as_stdin(model: ModelFactory, tmp_path: Path) -> None:
    """`chat < questions.txt` answers line by line; `chat < /dev/null` ends at once; both 0."""
    m = model(script=[{"match": "one", "reply": "First."}, {"match": "two", "reply": "Second."}])
    questions = tmp_path / "questions.txt"
    questions.write_text("one\ntwo\n")
    for source, expected in (
        (questions, "you> assistant> First.\nyou> assistant> Second.\nyou> \n"),
        (Path(os.devnull), "you> \n"),
    ):
        with source.open("rb") as stdin:
            r = subprocess.run(
                [sys.executable, "-m", "rkllm_sdk", "chat", *fake_args("1.2", m)],
                stdin=stdin,
                capture_output=True,
                text=True,
                env=env(),
                timeout=60,
                check=False,
            )
        assert r.returncode == 0, r.stderr
        assert r.stdout == expected


def test_tools_file_not_utf8_is_a_usage_error(model: ModelFactory, tmp_path: Path) -> None:
    """A tools file that is not UTF-8 is one line and exit 2, not a traceback."""
    bad = tmp_path / "tools.json"
    bad.write_bytes(b'\xff\xfe[{"type": "function"}]')
    r = rkllm("chat", "--tools", str(bad), *fake_args("1.3", model()), stdin="")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"rkllm chat: error: the tools file {bad} is not UTF-8 text: ")
    assert r.stderr.count("\n") == 1


def test_an_unreadable_tool_call_shows_its_error(model: ModelFactory) -> None:
    """A tool call that cannot be read prints its error, and `--json` keeps it."""
    m = model(script=[{"match": "go", "reply": "<tool_call>\n{not json\n</tool_call>"}])
    r = rkllm("run", "go", *fake_args("1.3", m))
    assert r.returncode == 0, r.stderr
    line = r.stderr.splitlines()[0]
    assert line.startswith("tool call ?({})  error: unreadable tool call JSON: ")
    r = rkllm("run", "go", "--json", *fake_args("1.3", m))
    (call,) = json.loads(r.stdout)["tool_calls"]
    assert call["error"].startswith("unreadable tool call JSON: ")
    assert (call["name"], call["arguments"]) == ("", {})


def test_doctor_names_what_is_wrong_with_the_model_file(tmp_path: Path) -> None:
    """A directory is "a directory"; a 10-byte garbage file or foreign JSON is not a model."""
    garbage = tmp_path / "garbage.rkllm"
    garbage.write_bytes(b"0123456789")
    other = tmp_path / "other.json"
    other.write_text('{"name": "x"}')
    expected = {
        tmp_path: f"model file {tmp_path} is a directory",
        garbage: f"model file {garbage} is not a fake runtime model: the fake reads only its "
        'own JSON files ("format": "rkllm-fake/1")',
        other: f'model file {other} is JSON but not a fake runtime model (no "format": '
        '"rkllm-fake/1")',
    }
    for path, what in expected.items():
        r = rkllm("doctor", "--runtime", "fake", "--model", str(path), "--json")
        assert r.returncode == 1
        assert [p["what"] for p in json.loads(r.stdout)["problems"]] == [what]


def test_model_size_is_checked_on_a_vendor_runtime(tmp_path: Path) -> None:
    """Without the fake, a model too small to be an .rkllm file is a problem (size only)."""
    from rkllm_sdk._doctor import model_file_problem  # noqa: PLC0415

    garbage = tmp_path / "garbage.rkllm"
    garbage.write_bytes(b"0123456789")
    problem = model_file_problem(garbage, fake_runtime=False)
    assert problem is not None and problem.what.startswith(
        f"model file {garbage} is only 10 bytes: too small for an .rkllm model"
    )
    big = tmp_path / "big.rkllm"
    big.write_bytes(b"\0" * (1 << 20))
    assert model_file_problem(big, fake_runtime=False) is None


def test_a_missing_model_is_the_only_cause_given(tmp_path: Path) -> None:
    """`run` with a missing model or a directory says so, without unrelated causes."""
    missing = tmp_path / "missing.rkllm"
    r = rkllm("run", "hi", "--runtime", "fake", "--model", str(missing))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"error: ModelLoadError: model file '{missing}' does not exist\n"
    r = rkllm("run", "hi", "--runtime", "fake", "--model", str(tmp_path))
    assert r.stderr == (
        f"error: ModelLoadError: model file '{tmp_path}' is a directory: give the file inside it\n"
    )


def test_a_text_file_runtime_is_not_a_shared_library(tmp_path: Path, model: ModelFactory) -> None:
    """A runtime path holding text is "not a shared library", said first and alone."""
    text = tmp_path / "librkllmrt.so"
    text.write_text("not a library\n")
    r = rkllm("doctor", "--runtime", str(text), "--json")
    assert r.returncode == 1
    whats = [p["what"] for p in json.loads(r.stdout)["problems"]]
    assert whats == [f"{text} is not a shared library (no ELF header): it cannot be the runtime"]
    r = rkllm("run", "hi", "--runtime", str(text), "--model", str(model()))
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: RuntimeNotFoundError: {text} is not a shared library")


def test_run_json_keeps_the_partial_text_when_the_run_fails(abi: str, model: ModelFactory) -> None:
    """`run --json` failing midway prints the JSON with what came and the error; exit 1."""
    m = model(faults="error_after=3", script=[{"match": "go", "reply": "Lights are on now."}])
    r = rkllm("run", "go", "--json", *fake_args(abi, m))
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["text"] == "Lights are on" and out["finish_reason"] == "error"
    assert out["error"].startswith("GenerationError: ") and out["runtime"]["abi"] == abi
    assert r.stderr.startswith("error: GenerationError: ")


def _chat_on_a_terminal(m: Path) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rkllm_sdk", "chat", *fake_args("1.3", m)],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=env(TERM="dumb"),
    )
    os.close(slave)
    return proc, master


def test_chat_edits_lines_on_a_terminal(model: ModelFactory) -> None:
    """On a terminal, arrow keys edit the line (readline): the model gets the edited text."""
    m = model(script=[{"match": "Hello", "reply": "Hi there."}])
    proc, master = _chat_on_a_terminal(m)
    seen = bytearray()
    try:
        _read_until(master, b"you> ", seen)
        os.write(master, b"Hllo\x1b[D\x1b[D\x1b[De\r")  # left three times, insert "e"
        _read_until(master, b"Hi there.", seen)
        _read_until(master, b"you> ", seen[seen.index(b"Hi there.") :])
        os.write(master, b"/exit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert b"assistant> Hi there." in seen


def test_ctrl_c_and_ctrl_d_at_a_terminal_prompt(model: ModelFactory) -> None:
    """At the terminal prompt Ctrl-D leaves with 0 and Ctrl-C with 130, without hanging."""
    for key, code in ((b"\x04", 0), (None, 130)):
        proc, master = _chat_on_a_terminal(model())
        seen = bytearray()
        try:
            _read_until(master, b"you> ", seen)
            if key is None:
                proc.send_signal(signal.SIGINT)
            else:
                os.write(master, key)
            assert proc.wait(timeout=30) == code
        finally:
            proc.kill()
            proc.wait()
            os.close(master)
