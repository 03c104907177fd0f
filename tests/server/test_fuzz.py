"""Property-based: whatever a client sends, the dispatcher answers valid JSON-RPC 2.0."""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rkllm_sdk.server import Connection, Server, ServerConfig
from rkllm_sdk.server.registry import REGISTRY

from .conftest import InProcess, live_handles

HANDLE = "$HANDLE"  # replaced by the handle the example's connection holds
CALL_DEADLINE_S = 5.0
SDK_CODES = range(-32099, -31999)  # the SDK's errors (server-error range)
ALLOWED = {-32700, -32600, -32601, -32602, *SDK_CODES}  # -32603 would be a bug of ours

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.just(HANDLE)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=16,
)
ids = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=8)
    | st.none()
    | st.sampled_from([math.nan, math.inf, -math.inf, 1.5, True, [1], {"a": 1}])
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


bad_arrays = st.one_of(
    st.just([[1, 2], [3]]),  # ragged
    st.just([1, math.nan, 3]),
    st.just([1, "2", 3]),
    st.just([True, False]),
    st.just([2**40, 1]),
    st.just([[[[1]]]]),
    st.just([]),
    st.builds(
        lambda dtype, shape, data: {"dtype": dtype, "shape": shape, "data": data},
        st.sampled_from(["float32", "int32", "float128", "complex64", "object", "", "<f4"]),
        st.lists(st.integers(min_value=-2, max_value=2**40), max_size=9),
        st.sampled_from([b64(b"\0" * 8), b64(b"\0" * 7), "not base64!", "", "====", 7]),
    ),
    st.builds(lambda v: {"dtype": "int32", "shape": [2], "data": v}, st.just(b64(b"\0" * 12))),
    values,
)
run_params = st.fixed_dictionaries(
    {
        "handle": st.just(HANDLE) | st.text(max_size=6),
        "rkllm_input": st.one_of(
            st.builds(
                lambda ids, n: {
                    "input_type": "RKLLM_INPUT_TOKEN",
                    "token_input": {"input_ids": ids, "n_tokens": n},
                },
                bad_arrays,
                st.integers(min_value=-1, max_value=2**33),
            ),
            st.builds(
                lambda e: {"input_type": "RKLLM_INPUT_EMBED", "embed_input": {"embed": e}},
                bad_arrays,
            ),
            st.builds(lambda p: {"input_type": "RKLLM_INPUT_PROMPT", "prompt_input": p}, values),
            values,
        ),
    },
    optional={"rkllm_infer_params": values},
)
method_params = st.sampled_from(sorted(REGISTRY.methods)).flatmap(
    lambda name: st.tuples(
        st.just(name),
        st.dictionaries(
            st.sampled_from(sorted(REGISTRY.methods[name].params.get("properties", {})) or ["x"]),
            values,
            max_size=4,
        ),
    )
)
calls = st.one_of(
    st.tuples(st.just("rkllm_run"), run_params),
    method_params,
    st.tuples(st.text(max_size=16), values),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request or notification, sometimes with a wrong envelope."""
    method, params = draw(calls)
    message: dict[str, Any] = {"jsonrpc": draw(st.sampled_from(["2.0"] * 8 + ["1.0", 2]))}
    message["method"] = method if draw(st.integers(0, 9)) else draw(values)
    if draw(st.booleans()) or params:
        message["params"] = params
    if draw(st.integers(0, 4)):
        message["id"] = draw(ids)
    if not draw(st.integers(0, 15)):
        message["extra"] = 1
    return message


texts = st.one_of(
    requests().map(json.dumps),
    st.lists(requests(), min_size=0, max_size=5).map(json.dumps),
    requests().map(json.dumps).flatmap(lambda t: st.integers(0, len(t)).map(lambda k: t[:k])),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(1, 10_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 10_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(4000, 5000).map(lambda n: '{"jsonrpc":"2.0","id":' + "9" * n + "}"),
    st.just('{"jsonrpc":"2.0","id":1e999,"method":"stats"}'),
    st.just('{"jsonrpc":"2.0","id":NaN,"method":"stats"}'),
)


def check_response(reply: Any) -> None:
    """One JSON-RPC 2.0 response object, with an allowed error code."""
    assert isinstance(reply, dict) and reply["jsonrpc"] == "2.0" and "id" in reply
    assert ("result" in reply) != ("error" in reply), reply
    if "error" in reply:
        error = reply["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str)
        assert error["code"] in ALLOWED, reply


def expected_ids(sent: Any) -> list[Any] | None:
    """The ids a well-formed request (or batch) must be answered with; None if unknown."""
    items = sent if isinstance(sent, list) else [sent]
    out = []
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            continue
        rid = item["id"]
        if isinstance(rid, bool) or not isinstance(rid, int | str | float | None):
            return None  # a bad id is answered with id null
        if isinstance(rid, float) and not math.isfinite(rid):
            return None
        out.append(rid)
    return out


async def _serve(server: Server, batch: list[str | bytes], abi: str) -> None:
    conn = Connection(server)
    reply = await server.handle_text(
        conn,
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "rkllm_init",
                "params": {"param": {"model_path": "m.json"}},
            }
        ),
    )
    assert reply is not None
    handle = json.loads(reply)["result"]["handle"]
    for raw in batch:
        text = raw.replace(HANDLE, handle) if isinstance(raw, str) else raw
        with anyio.fail_after(CALL_DEADLINE_S):
            out = await server.handle_text(conn, text)
        while len(conn.outbox):
            json.loads(await conn.outbox.get())
        try:
            sent = json.loads(text)
        except (ValueError, RecursionError):
            assert out is not None
            check_response(json.loads(out))
            assert json.loads(out)["error"]["code"] in (-32700, -32600)
            continue
        if out is None:  # only notifications: nothing answered
            wanted = expected_ids(sent)
            assert wanted is None or wanted == [] or sent == [], (text, wanted)
            continue
        reply_obj = json.loads(out)
        replies = reply_obj if isinstance(reply_obj, list) else [reply_obj]
        assert replies, text
        for r in replies:
            check_response(r)
        wanted = expected_ids(sent)
        if wanted is not None and isinstance(sent, list | dict) and sent:
            got = Counter(repr(r["id"]) for r in replies)
            want = Counter(map(repr, wanted))
            assert want <= got, (text, got, wanted)  # each id answered
            assert all(n == want[k] for k, n in got.items() if k != "None"), (text, got)
    await server.sessions.close_connection(conn)
    stats = server.sessions.stats()
    assert (stats["handles"], stats["runs"], stats["array_bytes"]) == (0, 0, 0)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(texts, min_size=1, max_size=8))
def test_every_message_gets_valid_jsonrpc(
    batch: list[str | bytes], backend: str, models_dir: Path, abi: str
) -> None:
    """Malformed JSON, wrong types, huge numbers, deep nesting, bad arrays and random
    methods all get valid JSON-RPC 2.0 replies in time, and nothing stays live after."""
    baseline = live_handles(abi)
    server = Server(
        ServerConfig(runtime="fake", abi=abi, models_dir=models_dir, max_message_bytes=65536)
    )
    anyio.run(_serve, server, batch, abi, backend=backend)
    assert live_handles(abi) == baseline


@pytest.mark.anyio
@pytest.mark.parametrize("raw_id", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_ids_are_invalid_requests(inproc: InProcess, raw_id: str) -> None:
    """An id JSON cannot echo (NaN, infinity) gets -32600 with id null, not an internal error."""
    reply = await inproc.raw('{"jsonrpc":"2.0","id":' + raw_id + ',"method":"stats"}')
    assert reply == {**reply, "id": None} and reply["error"]["code"] == -32600
