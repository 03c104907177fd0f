"""Metrics: per-handle snapshots, process totals, Prometheus text."""

from __future__ import annotations

import anyio
import pytest

import rkllm_sdk as rk
from rkllm_sdk import metrics

from .conftest import LoadLLM

pytestmark = pytest.mark.anyio


async def test_runs_are_counted_by_outcome(load: LoadLLM) -> None:
    """Successful runs, runtime failures, refusals and early closes are counted by type."""
    llm = await load(decode_ms=1, natural_end=False, script=[{"match": "ok", "reply": "fine"}])
    assert llm.metrics().calls_total == 0
    gen = await llm.generate("ok")
    async with llm.stream("long") as s:
        async for _ in s:
            break
    with pytest.raises(rk.InvalidParamsError):
        await llm.generate(rk.Prompt(text="x"), max_new_tokens=0)
    snap = llm.metrics()
    assert (snap.calls_ok, snap.calls_failed) == (1, 2)
    assert snap.failures == {"AbortedError": 1, "InvalidParamsError": 1}
    assert snap.generate_tokens >= len(gen.token_ids)
    assert snap.ttft_count == 2
    assert snap.ttft_seconds_mean > 0
    assert snap.generate_tokens_per_s > 0
    assert snap.process_rss_mb > 1
    assert (snap.queue_depth, snap.active_runs) == (0, 0)
    assert "<table>" in snap._repr_html_()


async def test_queue_depth_and_active_runs_while_busy(load: LoadLLM) -> None:
    """While a run holds the handle, a second caller is queued and one run is active."""
    llm = await load(faults="hang_after=1")
    async with llm.stream("first") as s:
        async for _ in s:
            break
        seen: list[tuple[int, int]] = []
        async with anyio.create_task_group() as tg:

            async def second() -> None:
                with pytest.raises(rk.ClosedError):
                    await llm.generate("second")

            tg.start_soon(second)
            await anyio.sleep(0.05)
            snap = llm.metrics()
            seen.append((snap.queue_depth, snap.active_runs))
            await llm.aclose()
    assert seen == [(1, 1)]


async def test_failed_runs_and_prometheus_text(load: LoadLLM) -> None:
    """Runtime errors are GenerationError failures; the exposition lists every series."""
    llm = await load(faults="error_after=2", natural_end=False)
    with pytest.raises(rk.GenerationError):
        await llm.generate("x")
    assert llm.metrics().failures == {"GenerationError": 1}
    text = metrics.render_prometheus()
    name = llm.model_path.rsplit("/", 1)[-1]
    assert (
        f'rkllm_calls_total{{model="{name}",abi="{llm.runtime.abi}",result="GenerationError"}} 1'
        in text
    )
    assert "# TYPE rkllm_queue_depth gauge" in text
    assert text.endswith("\n")
    total = metrics.process_metrics()
    assert total.calls_failed >= 1
