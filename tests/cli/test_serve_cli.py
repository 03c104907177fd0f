"""``rkllm serve``'s options for MCP and the named models: --mcp-stdio, --model,
--chat-template, --max-loaded, --max-queue, --keep-alive; their parse errors (exit 2) and
what a server started with them announces."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rkllm_sdk.cli._parser import build_parser
from rkllm_sdk.cli.serve import model_specs
from rkllm_sdk.testing import FakeModel
from tests.conftest import ModelFactory, skip_if_runtime_installed
from tests.server.conftest import DEADLINE_S

from .test_cli import env, rkllm

#: An MCP initialize request (the handshake era's first message).
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


def usage_error(*args: str) -> str:
    """Run ``rkllm serve ARGS`` expecting exit 2; its stderr."""
    done = rkllm("serve", *args, stdin="")
    assert done.returncode == 2, done
    return done.stderr


def test_stdio_and_mcp_stdio_are_exclusive() -> None:
    """Standard input carries one protocol: --stdio (JSON-RPC) or --mcp-stdio, not both."""
    err = usage_error("--stdio", "--mcp-stdio", "--runtime", "fake")
    assert "--mcp-stdio: not allowed with argument --stdio" in err


def test_mcp_stdio_counts_as_a_transport() -> None:
    """With no transport at all the error lists --mcp-stdio among the choices."""
    assert "--mcp-stdio" in usage_error("--runtime", "fake")


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("qwen3", "expected NAME=PATH"),
        ("qwen3=", "the model path is empty"),
        ("bad name=/m/x.rkllm", "bad model name"),
        ("q=/m/q.rkllm,context=4096", "unknown option 'context'"),
        ("q=/m/q.rkllm,max_context_len=lots", "max_context_len"),
    ],
)
def test_bad_model_options_exit_2(model: str, says: str) -> None:
    """A --model that does not parse stops the command before it serves, naming the fault."""
    err = usage_error("--mcp-stdio", "--runtime", "fake", "--model", model)
    assert says in err and "rkllm serve: error:" in err


def test_a_model_name_given_twice_exits_2() -> None:
    """Two --model options of one name (``q`` is ``q:latest``) are refused."""
    err = usage_error(
        "--mcp-stdio", "--runtime", "fake", "--model", "q=/a.rkllm", "--model", "q:latest=/b"
    )
    assert "q:latest more than once" in err


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-loaded", "0"),
        ("--max-loaded", "two"),
        ("--max-queue", "0"),
        ("--keep-alive", "-2"),
        ("--keep-alive", "soon"),
        ("--keep-alive", "inf"),
    ],
)
def test_bad_numbers_exit_2(option: str, value: str) -> None:
    """Counts must be at least 1; --keep-alive is -1 (forever) or finite seconds >= 0."""
    err = usage_error("--mcp-stdio", "--runtime", "fake", option, value)
    assert f"argument {option}" in err


def test_defaults_and_keep_alive_extremes() -> None:
    """Defaults: 1 loaded model, 8 queued requests, 300 s keep-alive; -1 and 0 parse."""
    parser = build_parser()
    args = parser.parse_args(["serve", "--mcp-stdio"])
    assert (args.max_loaded, args.max_queue, args.keep_alive) == (1, 8, 300.0)
    assert args.model is None and args.chat_template is None
    assert parser.parse_args(["serve", "--http", "h:1", "--keep-alive", "-1"]).keep_alive == -1
    assert parser.parse_args(["serve", "--http", "h:1", "--keep-alive", "0"]).keep_alive == 0


def test_model_specs_merge_options_and_the_models_dir(tmp_path: Path, model: ModelFactory) -> None:
    """--model names first; each model file of the directory is named by its stem unless a
    --model took the name; --chat-template fills in for models without their own."""
    models = tmp_path / "models"
    models.mkdir()
    for stem in ("m", "n"):
        model().rename(models / f"{stem}.json")
    (models / "notes.json").write_text(json.dumps({"not": "a model"}))
    args = build_parser().parse_args(
        [
            "serve",
            "--mcp-stdio",
            "--model",
            f"m={tmp_path / 'elsewhere.json'},template=llama3",
            "--model",
            "big=/models/big.rkllm,max_context_len=4096",
            "--chat-template",
            "qwen3",
        ]
    )
    specs = {s.name: s for s in model_specs(args, models)}
    assert sorted(specs) == ["big:latest", "m:latest", "n:latest"]
    assert specs["m:latest"].path == tmp_path / "elsewhere.json"
    assert specs["m:latest"].template == "llama3"
    assert specs["n:latest"].path == models / "n.json" and specs["n:latest"].template == "qwen3"
    params = specs["big:latest"].params
    assert params is not None and params.max_context_len == 4096
    assert model_specs(build_parser().parse_args(["serve", "--stdio"]), None) == []


def test_mcp_stdio_on_the_bundled_fake_names_its_demo_model() -> None:
    """``rkllm serve --mcp-stdio`` with no runtime serves the fake's demo model by name and
    exits 0 when its client closes standard input."""
    skip_if_runtime_installed()
    done = rkllm("serve", "--mcp-stdio", stdin="")
    assert done.returncode == 0, done.stderr
    assert "named models: demo-model:latest" in done.stderr
    assert done.stdout == ""


def test_sigterm_ends_mcp_stdio_while_its_client_is_connected() -> None:
    """SIGTERM stops ``rkllm serve --mcp-stdio`` (exit 0) even while standard input stays
    open and silent: the blocked read does not keep it alive."""
    cmd = [sys.executable, "-m", "rkllm_sdk", "serve", "--mcp-stdio", "--runtime", "fake"]
    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env()
    ) as proc:
        assert proc.stderr and proc.stdin and proc.stdout
        proc.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
        proc.stdin.flush()
        assert b'"serverInfo"' in proc.stdout.readline()  # serving (signals handled)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DEADLINE_S)
        assert "SIGTERM" in proc.stderr.read().decode()
        proc.stdin.close()
    assert proc.returncode == 0


def test_http_announces_every_endpoint_and_exits_0_on_sigterm(abi: str, tmp_path: Path) -> None:
    """``rkllm serve --http`` with a --model logs its named models and every path it serves
    (JSON-RPC, MCP, OpenAI, Ollama), answers an MCP initialize at /mcp, lists the model and
    chats on /v1 and /api, and exits 0 on SIGTERM (the catalog unloads its models)."""
    path = FakeModel(replies={"Hello": "Hi!"}).write(tmp_path / "demo.json")
    cmd = [sys.executable, "-m", "rkllm_sdk", "serve", "--http", "127.0.0.1:0"]
    cmd += ["--runtime", "fake", "--abi", abi, "--model", f"demo={path}", "--keep-alive", "-1"]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env()) as proc:
        try:
            assert proc.stderr and proc.stdout
            lines = []
            port = None
            for _ in range(50):
                line = proc.stderr.readline().decode()
                lines.append(line)
                found = re.search(r"listening on http 127\.0\.0\.1:(\d+) \((.*)\)", line)
                if found:
                    port = int(found.group(1))
                    break
            assert port, lines
            assert "named models: demo:latest" in "".join(lines)
            for where in ("/rpc", "/ws", "/mcp", "/v1 (OpenAI)", "/api (Ollama)", "/metrics"):
                assert where in lines[-1]
            headers = {"Accept": "application/json, text/event-stream"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE_S) as c:
                r = c.post("/mcp", json=INITIALIZE, headers=headers)
                assert r.status_code == 200 and '"serverInfo"' in r.text
                assert r.headers["mcp-session-id"]
                models = c.get("/v1/models").json()["data"]
                assert [m["id"] for m in models] == ["demo:latest"]
                tags = c.get("/api/tags").json()["models"]
                assert [m["name"] for m in tags] == ["demo:latest"]
                hello = [{"role": "user", "content": "Hello"}]
                openai = c.post("/v1/chat/completions", json={"model": "demo", "messages": hello})
                assert openai.json()["choices"][0]["message"]["content"] == "Hi!"
                body = {"model": "demo", "messages": hello, "stream": False}
                assert c.post("/api/chat", json=body).json()["message"]["content"] == "Hi!"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=DEADLINE_S)
            assert proc.stdout.read() == b""
        finally:
            if proc.poll() is None:  # a failed assertion: do not wait forever
                proc.kill()
    assert proc.returncode == 0


def _mcp_call(proc: subprocess.Popen[bytes], message: dict[str, object]) -> None:
    """Write one MCP message to the server's standard input."""
    assert proc.stdin
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


def _listening_port(proc: subprocess.Popen[bytes]) -> int:
    """The HTTP port the server announces on stderr."""
    assert proc.stderr
    lines = []
    for _ in range(50):
        line = proc.stderr.readline().decode()
        lines.append(line)
        found = re.search(r"listening on http 127\.0\.0\.1:(\d+) ", line)
        if found:
            return int(found.group(1))
    raise AssertionError(lines)


@pytest.mark.parametrize("with_http", [False, True])
def test_a_stdio_client_that_vanishes_mid_stream_does_not_crash_the_server(
    abi: str, tmp_path: Path, with_http: bool
) -> None:
    """A desktop client killed while ``generate`` streams (both its pipes closed at once):
    the server aborts the run and ends the connection quietly. Alone it exits 0 with no
    traceback; with ``--http`` too it keeps serving HTTP (no handle or run left) until
    SIGTERM, then exits 0. (The broken stdout was a traceback and exit 1, HTTP included.)"""
    FakeModel(decode_ms=20, natural_end=False).write(tmp_path / "slow.json")
    cmd = [sys.executable, "-m", "rkllm_sdk", "serve", "--mcp-stdio", "--runtime", "fake"]
    cmd += ["--abi", abi, "--models-dir", str(tmp_path)]
    if with_http:
        cmd += ["--http", "127.0.0.1:0"]
    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env()
    ) as proc:
        try:
            assert proc.stdin and proc.stdout and proc.stderr
            port = _listening_port(proc) if with_http else None
            _mcp_call(proc, INITIALIZE)
            assert b'"serverInfo"' in proc.stdout.readline()
            _mcp_call(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            generate = {"name": "generate", "_meta": {"progressToken": "p"}}
            generate["arguments"] = {"model": "slow", "prompt": "Go", "max_new_tokens": 5000}
            _mcp_call(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": generate})
            assert b"notifications/progress" in proc.stdout.readline()  # it streams
            proc.stdin.close()  # the client is killed: both pipes close
            proc.stdout.close()
            if port is not None:
                hello = {"model": "slow", "prompt": "Hi", "stream": False}
                hello["options"] = {"num_predict": 2}
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE_S) as c:
                    # the model is free at once (the abandoned run took 100 s), then idle
                    assert c.post("/api/generate", json=hello).status_code == 200
                    stats = {"jsonrpc": "2.0", "id": 1, "method": "stats"}
                    result = c.post("/rpc", json=stats).json()["result"]
                    assert (result["runs"], result["handles"]) == (0, 0)
                assert proc.poll() is None
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=DEADLINE_S)
            err = proc.stderr.read().decode()
            assert "Traceback" not in err, err
        finally:
            if proc.poll() is None:  # a failed assertion: do not wait forever
                proc.kill()
    assert proc.returncode == 0, err


def test_a_tcp_or_unix_address_that_cannot_be_bound_exits_2(tmp_path: Path) -> None:
    """A --tcp port in use or a --unix path in a missing directory: one line naming the
    option and why, exit 2 (it was a traceback and exit 1)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        spec = f"127.0.0.1:{taken.getsockname()[1]}"
        err = usage_error("--tcp", spec, "--runtime", "fake")
    assert f"rkllm serve: error: --tcp {spec}: " in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"rkllm serve: error: --tcp {spec}: "), err
    path = tmp_path / "missing" / "rkllm.sock"
    err = usage_error("--unix", str(path), "--runtime", "fake")
    assert f"rkllm serve: error: --unix {path}: No such file or directory" in err
    assert "Traceback" not in err


def test_a_named_model_that_cannot_load_is_refused_at_start(tmp_path: Path) -> None:
    """A --model file that does not exist, or a chat template that is neither built in nor
    a file (--chat-template, or a model's template=), stops the command at start (exit 2),
    naming the option: not a generic load failure on the first request."""
    model = FakeModel().write(tmp_path / "m.json")
    missing = tmp_path / "nope.rkllm"
    err = usage_error("--mcp-stdio", "--runtime", "fake", "--model", f"a={missing}")
    assert f"rkllm serve: error: --model a={missing}: no model file there" in err
    err = usage_error("--mcp-stdio", "--runtime", "fake", "--model", f"a={tmp_path}")
    assert "no model file there" in err
    err = usage_error(
        "--mcp-stdio", "--runtime", "fake", "--model", f"a={model}", "--chat-template", "nosuch"
    )
    assert "rkllm serve: error: --chat-template nosuch: unknown chat template 'nosuch'" in err
    err = usage_error("--mcp-stdio", "--runtime", "fake", "--model", f"a={model},template=x.j2")
    assert f"rkllm serve: error: --model a={model},template=x.j2: unknown chat template" in err
    done = rkllm("serve", "--mcp-stdio", "--runtime", "fake", "--model", f"a={model}", stdin="")
    assert done.returncode == 0, done.stderr  # an existing file with its guessed template
    done = rkllm(
        "serve", "--stdio", "--runtime", "fake", "--model", f"a={missing}", stdin=""
    )  # --model is ignored without --http or --mcp-stdio (a warning says so)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--http"],
        ["--mcp-stdio", "--idle-timeout", "0"],
        ["--mcp-stdio", "--abi", "2"],
        ["--mcp-stdio", "--max-queue", "x"],
        ["--mcp-stdio", "--frobnicate"],
        ["--stdio", "--mcp-stdio"],
    ],
)
def test_option_errors_are_one_line(args: list[str]) -> None:
    """An option argparse refuses is one line, as the command's own usage errors are
    (``rkllm serve: error: argument ...``; an unknown option is the ``rkllm`` parser's),
    exit 2; not the usage block first."""
    err = usage_error(*args)
    assert re.match(r"rkllm( serve)?: error: [^\n]+\n\Z", err), err


def test_the_fake_names_its_demo_model_only_where_it_is_served(tmp_path: Path) -> None:
    """``--runtime fake`` serves the current directory, or --models-dir: the banner does
    not promise the demo model there (it said "its demo model is demo-model.json" while
    none was named), it says how to serve it."""
    skip_if_runtime_installed()
    done = rkllm(
        "serve", "--mcp-stdio", "--runtime", "fake", "--models-dir", str(tmp_path), stdin=""
    )
    assert done.returncode == 0, done.stderr
    assert "demo model" not in done.stderr and "named models: none" in done.stderr
    done = rkllm("serve", "--mcp-stdio", "--runtime", "fake", stdin="")
    assert re.search(r"--models-dir \S+ serves its demo model", done.stderr), done.stderr
    done = rkllm("serve", "--mcp-stdio", stdin="")  # no runtime: the demo model is served
    assert "its demo model is demo-model (demo-model.json)" in done.stderr
    assert "named models: demo-model:latest" in done.stderr


def test_sigterm_lets_a_streaming_chat_finish_and_refuses_new_ones(
    abi: str, tmp_path: Path
) -> None:
    """SIGTERM during a streaming OpenAI chat: the chat streams to its end (the client gets
    the whole reply and ``[DONE]``), while a new request is refused at once as busy (429
    with Retry-After, to retry elsewhere or later) and /health says 503 "draining"; then
    the server exits 0. (Named-model requests were cut short, their clients left with no
    reply.)"""
    # 16 tokens, 80 ms each: the refusal and /health below happen while it streams.
    reply = "Every word of this reply reaches the client, though the server is stopping."
    FakeModel(replies={"Hello": reply}, decode_ms=80).write(tmp_path / "slow.json")
    cmd = [sys.executable, "-m", "rkllm_sdk", "serve", "--http", "127.0.0.1:0"]
    cmd += ["--runtime", "fake", "--abi", abi, "--models-dir", str(tmp_path)]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env()) as proc:
        try:
            assert proc.stderr
            port = _listening_port(proc)
            body = {"model": "slow", "messages": [{"role": "user", "content": "Hello"}]}
            url = f"http://127.0.0.1:{port}"
            streamed = {**body, "stream": True}
            with (
                httpx.Client(base_url=url, timeout=DEADLINE_S) as c,
                c.stream("POST", "/v1/chat/completions", json=streamed) as r,
            ):
                assert r.status_code == 200
                lines = r.iter_lines()
                events = [next(line for line in lines if line.startswith("data: "))]
                proc.send_signal(signal.SIGTERM)  # mid-stream: the first delta is out
                while "SIGTERM" not in (said := proc.stderr.readline().decode()):
                    assert said, "the server ended without a word on SIGTERM"
                refused = c.post("/v1/chat/completions", json=body)
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["Retry-After"]) >= 1
                assert "shutting down" in refused.json()["error"]["message"]
                health = c.get("/health")
                assert health.status_code == 503 and health.json()["status"] == "draining"
                events += [line for line in lines if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
            text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
            assert text == reply
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
            proc.wait(timeout=DEADLINE_S)
        finally:
            if proc.poll() is None:  # a failed assertion: do not wait forever
                proc.kill()
    assert proc.returncode == 0


def test_prompt_caches_default_to_the_models_dir(abi: str, tmp_path: Path) -> None:
    """Without --cache-dir, a long system prompt's prompt cache is saved under the models
    directory (the documented default) and a new conversation with the same system prompt
    reuses it (cached tokens); serve once passed no directory and cached nothing."""
    models = tmp_path / "models"
    models.mkdir()
    FakeModel(replies={"Hello": "Hi!"}).write(models / "m.json")
    cmd = [sys.executable, "-m", "rkllm_sdk", "serve", "--http", "127.0.0.1:0"]
    cmd += ["--runtime", "fake", "--abi", abi, "--models-dir", str(models)]
    system = {"role": "system", "content": "You are a careful assistant. " * 20}
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env()) as proc:
        try:
            port = _listening_port(proc)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE_S) as c:
                cached = []
                for question in ("Hello", "Hello again"):
                    body = {
                        "model": "m",
                        "messages": [system, {"role": "user", "content": question}],
                    }
                    usage = c.post("/v1/chat/completions", json=body).json()["usage"]
                    cached.append(usage["prompt_tokens_details"]["cached_tokens"])
            assert cached[0] == 0 and cached[1] > 0, cached
            assert list((models / "chat-prefix-cache").iterdir())
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=DEADLINE_S)
        finally:
            if proc.poll() is None:  # a failed assertion: do not wait forever
                proc.kill()
    assert proc.returncode == 0
