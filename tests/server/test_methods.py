"""Every registry method, served in process on the fake runtime (both ABIs)."""

from __future__ import annotations

import base64
import functools
from pathlib import Path

import anyio
import numpy as np
import pytest

from rkllm_sdk import AsyncLLM
from rkllm_sdk.server import Server, ServerConfig

from .conftest import InProcess

pytestmark = pytest.mark.anyio


def typed(arr: np.ndarray) -> dict[str, object]:
    return {
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "data": base64.b64encode(arr.tobytes()).decode(),
    }


async def test_run_streams_what_the_sdk_generates(
    inproc: InProcess, models_dir: Path, abi: str
) -> None:
    """rkllm_run's notifications carry the SDK's text in order (seq 0, 1, ...), then the
    response."""
    defaults = await inproc.ok("rkllm_createDefaultParam")
    assert defaults["param"]["model_path"] is None and "extend_param" in defaults["param"]
    handle = (
        await inproc.ok("rkllm_init", param={"model_path": "m.json", "max_context_len": 512})
    )["handle"]
    result = await inproc.ok(
        "rkllm_run",
        handle=handle,
        rkllm_input={"input_type": "RKLLM_INPUT_PROMPT", "role": "user", "prompt_input": "Hello"},
        rkllm_infer_params={"mode": 0, "keep_history": True},
    )
    notes = await inproc.notes()
    assert [n["params"]["seq"] for n in notes] == list(range(len(notes)))
    assert all(n["method"] == "rkllm_result" and n["params"]["id"] == inproc.next_id for n in notes)
    assert "".join(n["params"]["text"] for n in notes) == result["text"]
    async with await AsyncLLM.load(models_dir / "m.json", runtime="fake", abi=abi) as llm:
        assert (await llm.generate("Hello")).text == result["text"]
    assert result["state"] == "RKLLM_RUN_FINISH" and result["finish_reason"] == "stop"
    assert set(result["perf"]) >= {"prefill_time_ms", "generate_tokens"}
    sizes = (await inproc.ok("rkllm_get_kv_cache_size", handle=handle))["cache_sizes"]
    assert sizes[0] > 0
    await inproc.ok("rkllm_clear_kv_cache", handle=handle, keep_system_prompt=False)
    assert (await inproc.ok("rkllm_get_kv_cache_size", handle=handle))["cache_sizes"] == [0]
    assert (await inproc.ok("rkllm_is_running", handle=handle)) == {"is_running": False}
    await inproc.ok("rkllm_abort", handle=handle)
    await inproc.ok("rkllm_destroy", handle=handle)
    assert (await inproc.call("rkllm_destroy", handle=handle))["error"]["code"] == -32602


async def test_configuration_methods(inproc: InProcess, models_dir: Path, abi: str) -> None:
    """Templates, tools, LoRA and prompt caches all reach the runtime through the SDK."""
    handle = (await inproc.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
    await inproc.ok(
        "rkllm_set_chat_template", handle=handle, system_prompt="S", prefix="<u>", postfix="<a>"
    )
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    await inproc.ok(
        "rkllm_set_function_tools",
        handle=handle,
        system_prompt="S",
        tools=tools,
        tool_response_str="tool_response",
    )
    (models_dir / "style.lora").write_text("{}")
    reply = await inproc.call(
        "rkllm_load_lora",
        handle=handle,
        lora_adapter={
            "lora_adapter_path": "style.lora",
            "lora_adapter_name": "style",
            "scale": 1.0,
        },
    )
    assert "result" in reply or reply["error"]["code"] not in (-32603, -32602), reply
    await inproc.ok(
        "rkllm_run",
        handle=handle,
        rkllm_input={"input_type": 0, "prompt_input": "Hi"},
        rkllm_infer_params={
            "prompt_cache_params": {"save_prompt_cache": True, "prompt_cache_path": "p.cache"}
        },
    )
    await inproc.notes()
    assert (models_dir / "p.cache").exists()
    await inproc.ok("rkllm_load_prompt_cache", handle=handle, prompt_cache_path="p.cache")
    await inproc.ok("rkllm_release_prompt_cache", handle=handle)
    consts = await inproc.ok("rkllm_get_constants")
    assert consts["RKLLMInputType"]["RKLLM_INPUT_EMBED"] == 2
    assert (await inproc.ok("health"))["runtime"]["abi"] == abi


async def test_cross_attention_arrays_are_counted_while_held(
    inproc: InProcess, models_dir: Path
) -> None:
    """Cross-attention arrays of any rank arrive as lists or base64, and stats count their bytes."""
    handle = (
        await inproc.ok(
            "rkllm_init", param={"model_path": "m.json", "extend_param": {"use_cross_attn": True}}
        )
    )["handle"]
    k = np.ones((2, 3, 1, 4), np.float32)
    v = np.ones((2, 1, 4, 3), np.float32)
    cross = {
        "encoder_k_cache": typed(k),
        "encoder_v_cache": v.tolist(),
        "encoder_mask": [0.0, 0.0, 0.0],
        "encoder_pos": [0, 1, 2],
        "num_tokens": 3,
    }
    await inproc.ok("rkllm_set_cross_attn_params", handle=handle, cross_attn_params=cross)
    assert (await inproc.ok("stats"))["array_bytes"] == k.nbytes + v.nbytes + 12 + 12
    bad = {**cross, "encoder_v_cache": np.ones((2, 1, 4, 5), np.float32).tolist()}
    reply = await inproc.call("rkllm_set_cross_attn_params", handle=handle, cross_attn_params=bad)
    assert (
        reply["error"]["code"] == -32602 and reply["error"]["data"]["path"] == "cross_attn_params"
    )
    await inproc.ok("rkllm_destroy", handle=handle)
    assert (await inproc.ok("stats"))["array_bytes"] == 0


async def test_logits_and_hidden_states_come_back_typed(inproc: InProcess) -> None:
    """GET_LOGITS and GET_LAST_HIDDEN_LAYER answer with float32 arrays in the typed form."""
    handle = (await inproc.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
    ids = {
        "input_type": "RKLLM_INPUT_TOKEN",
        "token_input": {"input_ids": [1, 2, 3], "n_tokens": 3},
    }
    result = await inproc.ok(
        "rkllm_run",
        handle=handle,
        rkllm_input=ids,
        rkllm_infer_params={"mode": "RKLLM_INFER_GET_LOGITS"},
    )
    logits = result["logits"]
    arr = np.frombuffer(base64.b64decode(logits["logits"]["data"]), np.float32).reshape(
        logits["logits"]["shape"]
    )
    assert logits["logits"]["dtype"] == "float32" and arr.shape == (1, 64) == (
        logits["num_tokens"],
        logits["vocab_size"],
    )
    result = await inproc.ok(
        "rkllm_run", handle=handle, rkllm_input=ids, rkllm_infer_params={"mode": 1}
    )
    assert result["last_hidden_layer"]["hidden_states"]["shape"] == [3, 8]
    assert await inproc.notes() == []


async def test_embed_input_as_nested_list_and_as_base64(inproc: InProcess) -> None:
    """An embedding input runs as nested lists or typed base64; errors name the element."""
    handle = (await inproc.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
    emb = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    for embed in (emb.tolist(), typed(emb)):
        inp = {"input_type": "RKLLM_INPUT_EMBED", "embed_input": {"embed": embed, "n_tokens": 4}}
        result = await inproc.ok("rkllm_run", handle=handle, rkllm_input=inp)
        assert result["finish_reason"] in ("stop", "length")
    ragged = emb.tolist()
    ragged[3] = ragged[3][:5]
    inp = {"input_type": 2, "embed_input": {"embed": ragged}}
    reply = await inproc.call("rkllm_run", handle=handle, rkllm_input=inp)
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"]["path"] == "rkllm_input.embed_input.embed[3]"
    inp = {"input_type": 2, "embed_input": {"embed": [*emb.tolist()[:3], [1.0] * 7 + ["x"]]}}
    reply = await inproc.call("rkllm_run", handle=handle, rkllm_input=inp)
    assert reply["error"]["data"]["path"] == "rkllm_input.embed_input.embed[3][7]"
    for ids, path in [
        ([1, float("nan")], "token_input.input_ids[1]"),
        ([1, 2**40], "token_input.input_ids"),
        ([[1]], "token_input.input_ids"),
    ]:
        inp = {"input_type": 1, "token_input": {"input_ids": ids}}
        reply = await inproc.call("rkllm_run", handle=handle, rkllm_input=inp)
        assert (
            reply["error"]["code"] == -32602
            and reply["error"]["data"]["path"] == f"rkllm_input.{path}"
        ), reply
    bad = {"dtype": "float32", "shape": [4, 9], "data": typed(emb)["data"]}
    reply = await inproc.call(
        "rkllm_run", handle=handle, rkllm_input={"input_type": 2, "embed_input": {"embed": bad}}
    )
    assert reply["error"]["data"]["path"] == "rkllm_input.embed_input.embed.data"
    await inproc.notes()
    assert (await inproc.ok("stats"))["runs"] == 0


async def test_another_connections_handle_is_unknown(inproc: InProcess, server: object) -> None:
    """A handle belongs to its connection: another one gets -32602 unknown handle."""
    handle = (await inproc.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
    other = InProcess(inproc.server)
    reply = await other.call("rkllm_get_kv_cache_size", handle=handle)
    assert reply["error"]["code"] == -32602 and "unknown handle" in reply["error"]["message"]
    await other.close()
    assert (await inproc.ok("stats"))["handles"] == 1


async def test_paths_are_confined(inproc: InProcess, models_dir: Path, tmp_path: Path) -> None:
    """'..', absolute paths elsewhere and symlinks leading out are refused without reading them."""
    outside = tmp_path / "secret.json"
    outside.write_text('{"format": "rkllm-fake/1", "secret": "s3cr3t"}')
    (models_dir / "link.json").symlink_to(outside)
    for path in ["../secret.json", str(outside), "link.json", "/etc/passwd"]:
        reply = await inproc.call("rkllm_init", param={"model_path": path})
        assert reply["error"]["code"] == -32602, path
        assert reply["error"]["data"]["path"] == "param.model_path"
        assert "s3cr3t" not in str(reply) and "root:" not in str(reply)
    assert "result" in await inproc.call(
        "rkllm_init", param={"model_path": str(models_dir / "m.json")}
    )
    handle = (await inproc.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
    reply = await inproc.call("rkllm_load_prompt_cache", handle=handle, prompt_cache_path="../x")
    assert reply["error"]["code"] == -32602


async def test_limits_answer_at_once(server: object, models_dir: Path) -> None:
    """A full run queue answers BusyError's code at once; handles per connection are capped."""
    assert isinstance(server, Server)
    small = Server(
        ServerConfig(
            runtime="fake",
            abi=server.config.abi,
            models_dir=models_dir,
            max_queued_runs=1,
            max_handles_per_connection=1,
        )
    )
    client = InProcess(small)
    handle = (await client.ok("rkllm_init", param={"model_path": "slow.json"}))["handle"]
    reply = await client.call("rkllm_init", param={"model_path": "m.json"})
    assert reply["error"]["code"] == -32004
    inp = {"input_type": 0, "prompt_input": "go"}
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(client.call, "rkllm_run", handle=handle, rkllm_input=inp))
        with anyio.fail_after(5):
            while small.sessions.runs == 0:  # noqa: ASYNC110  # polling a counter
                await anyio.sleep(0.01)
            reply = await client.call("rkllm_run", handle=handle, rkllm_input=inp)
        assert reply["error"]["code"] == -32004 and reply["error"]["data"]["type"] == "BusyError"
        await client.ok("rkllm_abort", handle=handle)
    await client.close()
    assert small.sessions.stats()["handles"] == 0
