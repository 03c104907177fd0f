"""The ``rkllm`` command, run as a subprocess on the fake runtime: exit codes, JSON, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import rkllm_sdk as rk
from tests.conftest import ModelFactory, skip_if_runtime_installed
from tests.fake_runtime.driver import reference_pieces

REPLY = "Lights are on."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "set_light",
            "description": "Switch a light.",
            "parameters": {
                "type": "object",
                "properties": {"entity_id": {"type": "string"}, "on": {"type": "boolean"}},
                "required": ["entity_id", "on"],
            },
        },
    }
]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RKLLM_RUNTIME", "RKLLM_ABI")}
    e["RKLLM_FAKE_QUIET"] = "1"
    e.update(extra)
    return e


def rkllm(
    *args: str, stdin: str | None = None, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rkllm_sdk", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ or env(),
        timeout=60,
        check=False,
    )


def fake_args(abi: str, model: Path) -> list[str]:
    return ["--runtime", "fake", "--abi", abi, "--model", str(model)]


FALLBACK_NOTICE = (
    "no RKLLM runtime found: using the bundled fake runtime and its demo model "
    "(no NPU involved; pass --runtime and --model for a real one)"
)
CHAT_HELP = (
    "/reset forgets the conversation · /system TEXT sets the system prompt · "
    "/result JSON answers the last tool calls · /stats shows metrics · /exit leaves "
    "(Ctrl-C stops an answer, Ctrl-D leaves)"
)


def summary(tokens: int | str, finish: str, prefill: int | str = r"\d+") -> str:
    """A regex for the summary line after a reply (timings and rates are not exact)."""
    rate = r"(?:[0-9.]+|inf)"
    return (
        rf"{tokens} tokens · TTFT \d+ ms · prefill {prefill} tok at {rate} tok/s · "
        rf"decode {rate} tok/s · memory \d+ MB · finish: {finish}"
    )


def runtime_label(abi: str) -> str:
    """A regex for ``fake runtime VERSION (ABI abi) at PATH`` of the bundled fake."""
    return rf"fake runtime {abi}\.\d \(ABI {re.escape(abi)}\) at /\S+/librkllmrt-fake-{abi}\.so"


def templated_tokens(prompt: str) -> int:
    """Prefill length of a user prompt in the fake's default ChatML template (its README)."""
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
    return len(reference_pieces(text))


def assert_lines(text: str, patterns: Sequence[str]) -> None:
    """Each line of ``text`` matches its regex in full, and there are as many of each."""
    lines = text.splitlines()
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def as_json(report: rk.DoctorReport) -> Any:
    """The report as the command prints it with --json (tuples become lists)."""
    return json.loads(json.dumps(report.to_dict()))


def no_env_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process sees what the subprocess sees (``env()`` drops both variables)."""
    monkeypatch.delenv("RKLLM_RUNTIME", raising=False)
    monkeypatch.delenv("RKLLM_ABI", raising=False)


def test_help_lists_every_command() -> None:
    """`rkllm --help` lists exactly the five commands, and the console script is installed."""
    r = rkllm("--help")
    assert r.returncode == 0
    listed = re.findall(r"^    (\w+)  +\S", r.stdout, re.M)
    assert listed == ["doctor", "run", "chat", "bench", "serve"]
    assert (Path(sys.executable).parent / "rkllm").exists()  # the console script


def test_usage_errors_exit_2() -> None:
    """No command, or a count below 1, is a usage error: exit code 2 and argparse's message."""
    r = rkllm()
    assert r.returncode == 2
    assert (
        r.stderr.splitlines()[-1] == "rkllm: error: the following arguments are required: COMMAND"
    )
    r = rkllm("bench", "--runs", "0")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        "rkllm bench: error: argument --runs: must be from 1 to 2147483647: 0"
    )


def test_doctor_json_on_fake(abi: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`doctor --json` prints exactly doctor()'s report as JSON, and exits 0 on the fake."""
    no_env_runtime(monkeypatch)
    r = rkllm("doctor", "--runtime", "fake", "--abi", abi, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report == as_json(rk.doctor(runtime="fake", abi=abi))
    assert report["ok"] is True and report["is_fake"] is True and report["abi"] == abi


def test_doctor_exits_1_when_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`doctor` exits 1 and prints each of doctor()'s problems with its fix when one is found."""
    no_env_runtime(monkeypatch)
    missing = str(tmp_path / "missing.rkllm")
    r = rkllm("doctor", "--runtime", "fake", "--model", missing)
    assert r.returncode == 1
    problems = rk.doctor(missing, runtime="fake").problems
    assert len(problems) == 1 and "does not exist" in problems[0].what
    tail = r.stdout.splitlines()[-3:]
    assert tail == ["1 problem(s):", f"  ✗ {problems[0].what}", f"    fix: {problems[0].fix}"]
    monkeypatch.setenv("RKLLM_RUNTIME", str(tmp_path / "nope.so"))
    r = rkllm("doctor", "--json", environ=env(RKLLM_RUNTIME=str(tmp_path / "nope.so")))
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report == as_json(rk.doctor()) and len(report["problems"]) == 1


def test_run_streams_reply_and_summary(abi: str, model: ModelFactory) -> None:
    """`run` streams the reply alone to stdout and one summary line with the runtime to stderr."""
    m = model(script=[{"match": "light", "reply": REPLY}])
    prompt = "turn the light on"
    r = rkllm("run", prompt, *fake_args(abi, m))
    assert r.returncode == 0, r.stderr
    assert r.stdout == REPLY + "\n"
    n, prefill = len(reference_pieces(REPLY)), templated_tokens(prompt)
    assert_lines(r.stderr, [f"{summary(n, 'stop', prefill)} · {runtime_label(abi)}"])


def test_run_json(abi: str, model: ModelFactory) -> None:
    """`run --json` prints one object: the text cut at --max-new-tokens, counts and runtime."""
    m = model(script=[{"match": "light", "reply": REPLY}])
    r = rkllm("run", "light?", "--json", "--max-new-tokens", "3", *fake_args(abi, m))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = json.loads(r.stdout)
    assert out["finish_reason"] == "length" and out["tokens"] == 3
    assert out["text"] == b"".join(reference_pieces(REPLY)[:3]).decode()
    assert out["thinking"] == "" and out["tool_calls"] == []
    assert out["runtime"]["abi"] == abi and out["runtime"]["fake"] is True
    assert out["prefill_tokens"] == templated_tokens("light?") and out["interrupted"] is False
    assert out["model"] == str(m)


def test_run_thinking_goes_to_its_own_field(model: ModelFactory) -> None:
    """With --thinking, the think block goes to `thinking` and `text` is the answer alone."""
    m = model(thinking=True, script=[{"match": "q", "reply": "answer"}])
    r = rkllm("run", "q", "--thinking", "--json", *fake_args("1.3", m))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == "answer"
    assert (
        out["thinking"] and "<think>" not in out["thinking"] and "</think>" not in out["thinking"]
    )


def test_run_falls_back_to_the_bundled_fake() -> None:
    """With no runtime installed and no options, `run` says so once and uses the demo model."""
    skip_if_runtime_installed()
    r = rkllm("run", "Hello", "--json", "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr == FALLBACK_NOTICE + "\n"
    assert json.loads(r.stdout)["text"] == "Hello!"


def test_run_errors_exit_1(abi: str, model: ModelFactory, tmp_path: Path) -> None:
    """An SDK error during or before the run exits 1 with one `error: Type: message` line."""
    r = rkllm("run", "hi", *fake_args(abi, model(faults="error_after=2")))
    assert r.returncode == 1
    assert r.stderr.startswith("error: GenerationError: ") and r.stderr.count("\n") == 1
    missing = tmp_path / "missing.json"
    r = rkllm("run", "hi", *fake_args(abi, missing))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: ModelLoadError: ") and r.stderr.count("\n") == 1
    assert f"'{missing}'" in r.stderr


def test_chat_commands_and_tool_round_trip(abi: str, model: ModelFactory, tmp_path: Path) -> None:
    """`chat` answers, runs every slash command, prints tool calls and sends /result back."""
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"tools": TOOLS}))
    m = model(script=[{"match": "hello", "reply": "Hi there."}])
    lines = [
        "hello",
        "/stats",
        "switch set_light please",  # the fake calls a tool named in the text
        '/result {"ok": true}',
        "/reset",
        "/system You are terse.",
        "/nonsense",
        "/exit",
    ]
    r = rkllm("chat", "--tools", str(tools), *fake_args(abi, m), stdin="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    call = {"name": "set_light", "arguments": {"entity_id": "fake-entity_id", "on": True}}
    assert_lines(
        r.stdout,
        [
            re.escape("you> assistant> Hi there."),
            "you> session metrics",
            r" turns \(ok / failed\) +1 / 0 ",
            r" mean time to first token +\d+ ms ",
            r" prefill +\d+ tok, [0-9.]+ tok/s ",
            r" decode +\d+ tok, [0-9.]+ tok/s ",
            r" runtime memory \(peak\) +\d+ MB ",
            r" process memory \(RSS\) +\d+ MB ",
            "you> assistant> <tool_call>",
            re.escape(json.dumps(call)),
            "</tool_call>",
            re.escape('you> assistant> The tool returned: {"ok": true}'),
            "you> you> you> you> ",  # /reset, /system, /nonsense, /exit
        ],
    )
    assert_lines(
        r.stderr,
        [
            runtime_label(abi),
            re.escape(CHAT_HELP),
            summary(len(reference_pieces("Hi there.")), "stop"),
            re.escape(f"tool call set_light({json.dumps(call['arguments'])})  ")
            + r"id=call_0_[0-9a-f]{8}",
            summary(r"\d+", "tool_calls"),
            summary(r"\d+", "stop"),
            "conversation forgotten",
            "system prompt set; conversation restarted",
            re.escape(f"unknown command /nonsense · {CHAT_HELP}"),
        ],
    )


def test_chat_bad_tools_file_is_a_usage_error(model: ModelFactory, tmp_path: Path) -> None:
    """A tools file without a list of tool objects exits 2 before any model is loaded."""
    bad = tmp_path / "tools.json"
    bad.write_text('{"tools": 3}')
    r = rkllm("chat", "--tools", str(bad), *fake_args("1.3", model()), stdin="")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"rkllm chat: error: the tools file {bad} must hold a list of tool objects\n"


def test_chat_ends_at_end_of_input(model: ModelFactory) -> None:
    """End of input (Ctrl-D) leaves the chat with exit code 0 after one prompt."""
    r = rkllm("chat", *fake_args("1.2", model()), stdin="")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "you> \n"
    assert_lines(r.stderr, [runtime_label("1.2"), re.escape(CHAT_HELP)])


def test_bench_json(abi: str, model: ModelFactory) -> None:
    """`bench --json` gives every counted run (exact prompt length) and a spread per figure."""
    args = ["bench", "--json", "--runs", "2", "--prompt-tokens", "16", "--new-tokens", "4"]
    m = model()
    r = rkllm(*args, *fake_args(abi, m))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["runs"]) == 2 and out["runtime"]["abi"] == abi
    assert (out["prompt_tokens"], out["new_tokens"], out["model"]) == (16, 4, str(m))
    assert all(run["prefill_tokens"] == 16 for run in out["runs"])
    if abi == "1.3":  # ignore_eos_token: exactly --new-tokens every run
        assert all(run["tokens"] == 4 for run in out["runs"])
    keys = {"ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "memory_mb"}
    assert set(out["summary"]) == keys
    for key in keys:
        s = out["summary"][key]
        assert set(s) == {"median", "min", "max"}
        assert s["min"] <= s["median"] <= s["max"]


def test_bench_table(model: ModelFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench` prints the runtime and platform line, the settings line, and one row per figure."""
    no_env_runtime(monkeypatch)
    m = model()
    r = rkllm("bench", "--runs", "1", "--new-tokens", "2", *fake_args("1.3", m))
    assert r.returncode == 0, r.stderr
    report = rk.doctor(runtime="fake", abi="1.3")
    lines = r.stdout.splitlines()
    assert lines[:2] == [
        f"fake runtime 1.3.0 (ABI 1.3) · driver {report.driver_version or '-'} · "
        f"platform {report.platform or '-'} · {report.machine}",
        f"model {m} · 128 prompt tokens · 2 new tokens · 1 runs (+1 warm-up)",
    ]
    rows = re.findall(r"^[│|] (.+?) +[│|]", r.stdout, re.M)  # (ASCII box without UTF-8)
    assert rows == [
        "time to first token (ms)",
        "prefill (tok/s)",
        "decode (tok/s)",
        "runtime memory (peak) (MB)",
    ]


def _interrupt_after_output(
    args: Sequence[str], stdin: str | None = None, signals: int = 1
) -> tuple[int, str, str]:
    """Start the command, wait for generated text on stdout, send SIGINT, collect the rest."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rkllm_sdk", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    assert proc.stdout is not None and proc.stdin is not None
    if stdin is not None:
        proc.stdin.write(stdin.encode())
        proc.stdin.flush()
    seen = b""
    deadline = time.monotonic() + 30
    while b"word" not in seen and time.monotonic() < deadline:
        seen += os.read(proc.stdout.fileno(), 4096)
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
    if stdin is not None:
        proc.stdin.write(b"/exit\n")
        proc.stdin.flush()
    out, err = proc.communicate(timeout=30)
    with pytest.raises(ProcessLookupError):  # reaped: nothing left behind
        os.kill(proc.pid, 0)
    return proc.returncode, (seen + out).decode(), err.decode()


SLOW_ENDLESS: dict[str, Any] = {
    "decode_ms": 20,
    "natural_end": False,
    "script": [{"match": "go", "reply": "word " * 400}],
}


def test_sigint_during_run_aborts_cleanly(abi: str, model: ModelFactory) -> None:
    """Ctrl-C during `run` aborts on the NPU, prints what came and the summary, exits 130."""
    m = model(**SLOW_ENDLESS)
    code, out, err = _interrupt_after_output(["run", "go", *fake_args(abi, m)])
    assert code == 130
    assert_lines(
        err,
        [
            "interrupted: generation aborted",
            f"{summary(r'[0-9]+', 'abort')} · {runtime_label(abi)}",
        ],
    )
    assert out.endswith("\n") and ("word " * 400).startswith(out[:-1])
    assert out.count("word") < 400


def test_repeated_sigint_leaves_at_once(model: ModelFactory) -> None:
    """A third Ctrl-C leaves at once with exit code 130, without a traceback."""
    code, _, err = _interrupt_after_output(
        ["run", "go", *fake_args("1.3", model(**SLOW_ENDLESS))], signals=3
    )
    assert code == 130 and "Traceback" not in err


def test_sigint_during_chat_stops_the_answer_only(model: ModelFactory) -> None:
    """Ctrl-C during a chat answer stops that answer only; the chat goes on to /exit, code 0."""
    m = model(**SLOW_ENDLESS)
    code, out, err = _interrupt_after_output(["chat", *fake_args("1.3", m)], stdin="go\n")
    assert code == 0, err
    assert_lines(
        err,
        [runtime_label("1.3"), re.escape(CHAT_HELP), "stopped", summary(r"[0-9]+", "abort")],
    )
    head, tail = "you> assistant> ", "\nyou> \n"  # the stopped answer, then the next prompt
    assert out.startswith(head + "word") and out.endswith(tail)
    assert ("word " * 400).startswith(out[len(head) : -len(tail)])
    assert out.count("word") < 400
