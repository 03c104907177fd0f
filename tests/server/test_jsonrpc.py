"""JSON-RPC 2.0 as the spec's own examples show it, served in process (no sockets)."""

from __future__ import annotations

import json

import pytest

from .conftest import InProcess

pytestmark = pytest.mark.anyio


async def test_ids_of_every_kind_are_echoed_unchanged(inproc: InProcess) -> None:
    """A string, an integer, a float and a null id come back exactly as sent."""
    for rid in ["abc", 7, 1.5, None, "", 2**40]:
        req = {"jsonrpc": "2.0", "method": "stats", "id": rid}
        reply = await inproc.raw(json.dumps(req))
        assert reply["id"] == rid and type(reply["id"]) is type(rid)
        assert "result" in reply


async def test_notifications_get_no_reply_even_when_they_fail(inproc: InProcess) -> None:
    """A message without id gets no reply: a known method, an unknown one, bad params."""
    assert await inproc.raw('{"jsonrpc": "2.0", "method": "stats"}') is None
    assert await inproc.raw('{"jsonrpc": "2.0", "method": "foobar"}') is None
    bad = '{"jsonrpc": "2.0", "method": "rkllm_abort", "params": {"handle": 1}}'
    assert await inproc.raw(bad) is None


async def test_parse_error_and_invalid_requests(inproc: InProcess) -> None:
    """Broken JSON is -32700 with id null; a well-formed non-request is -32600."""
    reply = await inproc.raw('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert reply == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Parse error"},
    }
    reply = await inproc.raw('{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert reply["error"]["code"] == -32600 and reply["id"] is None
    for text in [
        "1",
        "[1]",
        '{"method": "stats", "id": 1}',
        '{"jsonrpc": "2.0", "id": {}, "method": "x"}',
    ]:
        reply = await inproc.raw(text)
        replies = reply if isinstance(reply, list) else [reply]
        assert all(r["error"]["code"] == -32600 for r in replies), text


async def test_method_not_found(inproc: InProcess) -> None:
    """An unknown method answers -32601 with the request's id."""
    reply = await inproc.raw('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert reply["error"]["code"] == -32601 and reply["id"] == "1"


async def test_empty_and_invalid_batches(inproc: InProcess) -> None:
    """An empty batch is one -32600; a batch of non-objects gets one -32600 per entry."""
    reply = await inproc.raw("[]")
    assert reply["error"]["code"] == -32600
    reply = await inproc.raw("[1,2,3]")
    assert [r["error"]["code"] for r in reply] == [-32600] * 3
    broken = (
        '[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        '{"jsonrpc": "2.0", "method"]'
    )
    assert (await inproc.raw(broken))["error"]["code"] == -32700


async def test_mixed_batch_answers_requests_only(inproc: InProcess) -> None:
    """The spec's mixed batch: replies to the requests (any order), none to notifications."""
    batch = [
        {"jsonrpc": "2.0", "method": "stats", "id": "1"},
        {"jsonrpc": "2.0", "method": "health"},
        {"jsonrpc": "2.0", "method": "rkllm_get_constants", "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "rkllm_abort", "params": {"handle": "nope"}, "id": "9"},
    ]
    reply = await inproc.raw(json.dumps(batch))
    by_id = {r["id"]: r for r in reply if r["id"] is not None}
    assert len(reply) == 5
    assert "result" in by_id["1"] and "result" in by_id["2"]
    assert by_id["5"]["error"]["code"] == -32601
    assert by_id["9"]["error"]["code"] == -32602
    assert by_id["9"]["error"]["data"]["path"] == "handle"
    assert next(r for r in reply if r["id"] is None)["error"]["code"] == -32600
    assert await inproc.raw(json.dumps([{"jsonrpc": "2.0", "method": "stats"}] * 3)) is None


async def test_positional_params_and_wrong_types_are_invalid_params(inproc: InProcess) -> None:
    """By-position params and a mistyped field answer -32602 naming the field."""
    reply = await inproc.raw('{"jsonrpc":"2.0","id":1,"method":"rkllm_abort","params":["h"]}')
    assert reply["error"]["code"] == -32602
    reply = await inproc.call("rkllm_init", param={"model_path": "m.json", "top_k": "many"})
    assert reply["error"]["data"]["path"] == "param.top_k"
    reply = await inproc.call("rkllm_init", param={"model_path": "m.json", "top_k": 2**40})
    assert reply["error"]["data"]["path"] == "param.top_k"
    reply = await inproc.call(
        "rkllm_init", param={"model_path": "m.json", "extend_param": {"x": 1}}
    )
    assert reply["error"]["data"]["path"] == "param.extend_param.x"


async def test_discover_lists_every_registered_method(inproc: InProcess) -> None:
    """rpc.discover is an OpenRPC document naming each runtime function and proxy method."""
    doc = await inproc.ok("rpc.discover")
    names = {m["name"] for m in doc["methods"]}
    assert doc["openrpc"].startswith("1.")
    expected = {
        "rkllm_createDefaultParam",
        "rkllm_init",
        "rkllm_run",
        "rkllm_run_async",
        "rkllm_get_run_results",
        "rkllm_abort",
        "rkllm_is_running",
        "rkllm_destroy",
        "rkllm_load_lora",
        "rkllm_load_prompt_cache",
        "rkllm_release_prompt_cache",
        "rkllm_clear_kv_cache",
        "rkllm_get_kv_cache_size",
        "rkllm_set_chat_template",
        "rkllm_set_function_tools",
        "rkllm_set_cross_attn_params",
        "rkllm_get_functions",
        "rkllm_get_constants",
        "health",
        "stats",
        "rpc.discover",
    }
    assert names == expected
    functions = await inproc.ok("rkllm_get_functions")
    assert functions["not_served"] == {}
    assert len(functions["functions"]) == 15
