"""The ``rkllm`` command, run as a subprocess on the fake runtime: exit codes, JSON, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ModelFactory, skip_if_runtime_installed

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


def test_help_lists_every_command() -> None:
    r = rkllm("--help")
    assert r.returncode == 0
    for command in ("doctor", "run", "chat", "bench"):
        assert command in r.stdout
    assert (Path(sys.executable).parent / "rkllm").exists()  # the console script


def test_usage_errors_exit_2() -> None:
    assert rkllm().returncode == 2
    r = rkllm("bench", "--runs", "0")
    assert r.returncode == 2 and "at least 1" in r.stderr


def test_doctor_json_on_fake(abi: str) -> None:
    r = rkllm("doctor", "--runtime", "fake", "--abi", abi, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["is_fake"] is True and report["abi"] == abi


def test_doctor_exits_1_when_broken(tmp_path: Path) -> None:
    r = rkllm("doctor", "--runtime", "fake", "--model", str(tmp_path / "missing.rkllm"))
    assert r.returncode == 1
    assert "does not exist" in r.stdout and "fix:" in r.stdout
    r = rkllm("doctor", "--json", environ=env(RKLLM_RUNTIME=str(tmp_path / "nope.so")))
    assert r.returncode == 1
    assert json.loads(r.stdout)["problems"]


def test_run_streams_reply_and_summary(abi: str, model: ModelFactory) -> None:
    m = model(script=[{"match": "light", "reply": REPLY}])
    r = rkllm("run", "turn the light on", *fake_args(abi, m))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == REPLY
    assert "TTFT" in r.stderr and "decode" in r.stderr and f"(ABI {abi})" in r.stderr


def test_run_json(abi: str, model: ModelFactory) -> None:
    m = model(script=[{"match": "light", "reply": REPLY}])
    r = rkllm("run", "light?", "--json", "--max-new-tokens", "3", *fake_args(abi, m))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["finish_reason"] == "length" and out["tokens"] == 3
    assert REPLY.startswith(out["text"]) and out["text"]
    assert out["runtime"]["abi"] == abi and out["runtime"]["fake"] is True
    assert out["prefill_tokens"] > 0 and out["interrupted"] is False


def test_run_thinking_goes_to_its_own_field(model: ModelFactory) -> None:
    m = model(thinking=True, script=[{"match": "q", "reply": "answer"}])
    r = rkllm("run", "q", "--thinking", "--json", *fake_args("1.3", m))
    out = json.loads(r.stdout)
    assert out["thinking"] and "<think>" not in out["text"] and out["text"].endswith("answer")


def test_run_falls_back_to_the_bundled_fake() -> None:
    skip_if_runtime_installed()
    r = rkllm("run", "Hello", "--json", "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert "bundled fake runtime" in r.stderr
    assert json.loads(r.stdout)["text"] == "Hello!"


def test_run_errors_exit_1(abi: str, model: ModelFactory, tmp_path: Path) -> None:
    r = rkllm("run", "hi", *fake_args(abi, model(faults="error_after=2")))
    assert r.returncode == 1 and "GenerationError" in r.stderr
    r = rkllm("run", "hi", *fake_args(abi, tmp_path / "missing.json"))
    assert r.returncode == 1 and "ModelLoadError" in r.stderr


def test_chat_commands_and_tool_round_trip(abi: str, model: ModelFactory, tmp_path: Path) -> None:
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
    assert "Hi there." in r.stdout
    assert "session metrics" in r.stdout and "turns (ok / failed)" in r.stdout
    assert 'tool call set_light({"entity_id": "fake-entity_id", "on": true})' in r.stderr
    assert 'The tool returned: {"ok": true}' in r.stdout
    assert "conversation forgotten" in r.stderr and "system prompt set" in r.stderr
    assert "unknown command /nonsense" in r.stderr


def test_chat_bad_tools_file_is_a_usage_error(model: ModelFactory, tmp_path: Path) -> None:
    bad = tmp_path / "tools.json"
    bad.write_text('{"tools": 3}')
    r = rkllm("chat", "--tools", str(bad), *fake_args("1.3", model()), stdin="")
    assert r.returncode == 2 and "list of tool objects" in r.stderr


def test_chat_ends_at_end_of_input(model: ModelFactory) -> None:
    r = rkllm("chat", *fake_args("1.2", model()), stdin="")
    assert r.returncode == 0, r.stderr


def test_bench_json(abi: str, model: ModelFactory) -> None:
    args = ["bench", "--json", "--runs", "2", "--prompt-tokens", "16", "--new-tokens", "4"]
    r = rkllm(*args, *fake_args(abi, model()))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["runs"]) == 2 and out["runtime"]["abi"] == abi
    assert all(run["prefill_tokens"] == 16 for run in out["runs"])
    if abi == "1.3":  # ignore_eos_token: exactly --new-tokens every run
        assert all(run["tokens"] == 4 for run in out["runs"])
    for key in ("ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "memory_mb"):
        s = out["summary"][key]
        assert s["min"] <= s["median"] <= s["max"]


def test_bench_table(model: ModelFactory) -> None:
    r = rkllm("bench", "--runs", "1", "--new-tokens", "2", *fake_args("1.3", model()))
    assert r.returncode == 0, r.stderr
    assert "fake runtime 1.3.0 (ABI 1.3)" in r.stdout and "decode (tok/s)" in r.stdout


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
    m = model(**SLOW_ENDLESS)
    code, out, err = _interrupt_after_output(["run", "go", *fake_args(abi, m)])
    assert code == 130
    assert "interrupted: generation aborted" in err and "finish: abort" in err
    assert "Traceback" not in err
    assert out.count("word") < 400


def test_repeated_sigint_leaves_at_once(model: ModelFactory) -> None:
    code, _, err = _interrupt_after_output(
        ["run", "go", *fake_args("1.3", model(**SLOW_ENDLESS))], signals=3
    )
    assert code == 130 and "Traceback" not in err


def test_sigint_during_chat_stops_the_answer_only(model: ModelFactory) -> None:
    m = model(**SLOW_ENDLESS)
    code, out, err = _interrupt_after_output(["chat", *fake_args("1.3", m)], stdin="go\n")
    assert code == 0, err
    assert "stopped" in err and "finish: abort" in err and "Traceback" not in err
    assert out.count("word") < 400
