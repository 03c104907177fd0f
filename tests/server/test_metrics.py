"""The proxy's per-method metrics: the stats method and the Prometheus exposition."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rkllm_sdk.metrics import render_prometheus
from rkllm_sdk.server import Server

from .conftest import InProcess

pytestmark = pytest.mark.anyio

PROMPT = {"input_type": "RKLLM_INPUT_PROMPT", "role": "user", "prompt_input": "Hello"}


async def _known_sequence(inproc: InProcess) -> None:
    """Two runs, a bad params call, an unknown method, a parse error, a notification."""
    handle = (await inproc.ok("rkllm_init", param={"model_path": "m.json"}))["handle"]
    for _ in range(2):
        await inproc.ok("rkllm_run", handle=handle, rkllm_input=PROMPT)
    bad = await inproc.call("rkllm_run", handle=handle)
    assert bad["error"]["code"] == -32602
    missing = await inproc.call("no_such_method")
    assert missing["error"]["code"] == -32601
    assert (await inproc.raw("{not json"))["error"]["code"] == -32700
    note = '{"jsonrpc": "2.0", "method": "rkllm_is_running", "params": {"handle": "%s"}}'
    assert await inproc.raw(note % handle) is None
    await inproc.ok("rkllm_destroy", handle=handle)
    await inproc.notes()


async def test_stats_counts_each_method_exactly(inproc: InProcess) -> None:
    """After a known sequence of calls, stats counts calls, successes and failures by code."""
    await _known_sequence(inproc)
    stats = await inproc.ok("stats")
    methods = stats["methods"]
    assert methods["rkllm_init"] == {**methods["rkllm_init"], "calls": 1, "ok": 1, "failed": 0}
    run = methods["rkllm_run"]
    assert (run["calls"], run["ok"], run["failed"], run["failures"]) == (3, 2, 1, {"-32602": 1})
    assert methods["_unknown"]["failures"] == {"-32601": 1}
    assert methods["_invalid"]["failures"] == {"-32700": 1}
    assert (methods["rkllm_is_running"]["calls"], methods["rkllm_is_running"]["ok"]) == (1, 1)
    assert methods["rkllm_destroy"]["ok"] == 1
    assert "stats" not in methods  # the stats call itself is counted after it answers
    lat = run["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] and lat["mean"] > 0
    assert stats["generations"] == 2 and stats["generate_tokens_per_s"] > 0
    assert (stats["handles"], stats["runs"], stats["queued_runs"], stats["array_bytes"]) == (
        0,
        0,
        0,
        0,
    )
    assert stats["rss_mb"] > 0 and stats["memory_usage_mb"] >= 0
    assert (await inproc.ok("stats"))["methods"]["stats"]["calls"] == 1


async def test_prometheus_text_parses_with_each_series_once(
    inproc: InProcess, server: Server
) -> None:
    """The exposition parses, appended to the SDK's, with each series once and exact counts."""
    await _known_sequence(inproc)
    text = server.prometheus_text()
    families = list(text_string_to_metric_families(render_prometheus() + text))
    names = Counter(f.name for f in families)
    assert all(n == 1 for n in names.values()), names
    series = Counter((s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples)
    assert all(n == 1 for n in series.values()), series
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families
        if f.name.startswith("rkllm_proxy")
        for s in f.samples
    }

    def requests(method: str, outcome: str) -> float:
        key = (("method", method), ("outcome", outcome))
        return samples[("rkllm_proxy_requests_total", key)]

    assert requests("rkllm_run", "ok") == 2
    assert requests("rkllm_run", "-32602") == 1
    assert requests("_unknown", "-32601") == 1
    assert requests("_invalid", "-32700") == 1
    assert samples[("rkllm_proxy_request_seconds_count", (("method", "rkllm_run"),))] == 3
    q99 = (("method", "rkllm_run"), ("quantile", "0.99"))
    assert samples[("rkllm_proxy_request_seconds", q99)] > 0
    assert samples[("rkllm_proxy_generations_total", ())] == 2
    assert samples[("rkllm_proxy_generated_tokens_total", ())] > 0
    assert samples[("rkllm_proxy_handles", ())] == 0
    assert samples[("rkllm_proxy_runs", ())] == 0
    assert samples[("rkllm_proxy_queued_runs", ())] == 0
    assert samples[("rkllm_proxy_generate_tokens_per_second", ())] > 0
