"""The named models' counters and their Prometheus text (``/metrics``).

:class:`ModelCounters` is one model's: the catalog counts turns and loads, the chat engine
adds the token counts. :func:`prometheus_text` renders every model's, from a private registry
(:meth:`~.catalog.ModelCatalog.metrics_text` hands it the catalog's models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["ModelCounters", "prometheus_text"]


@attrs.define(kw_only=True)
class ModelCounters:
    """One model's counters since the server started. The catalog counts turns and loads;
    the engine adds the token counts.

    Attributes:
        queued: requests waiting for their turn now.
        running: requests holding the model now (0 or 1; loading included).
        requests: requests that got their turn.
        rejected: requests refused at once: QueueFullError (its DrainingError included).
        prompt_tokens: prompt tokens of the requests (engine).
        generated_tokens: tokens generated (engine).
        prefill_tokens_saved: prompt tokens not prefilled thanks to KV-cache reuse (engine).
        loads: successful loads; load_failures: failed ones; unloads: handles destroyed.
        busy_seconds: time requests held the model, summed (for the retry estimate).
    """

    queued: int = 0
    running: int = 0
    requests: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_tokens_saved: int = 0
    loads: int = 0
    load_failures: int = 0
    unloads: int = 0
    busy_seconds: float = 0.0


#: One model as the text shows it: its name, its counters, whether it is loaded.
Row = tuple[str, ModelCounters, bool]

#: Per-model families: (name, help, kind, value of a model's counters and loaded flag).
_FAMILIES: tuple[tuple[str, str, str, Callable[[ModelCounters, bool], float]], ...] = (
    ("queued_requests", "Requests waiting for the model.", "gauge", lambda c, _: c.queued),
    ("running_requests", "Requests holding the model.", "gauge", lambda c, _: c.running),
    ("model_loaded", "1 while the model is loaded.", "gauge", lambda _, loaded: int(loaded)),
    ("requests", "Requests served (given their turn).", "counter", lambda c, _: c.requests),
    (
        "rejected_requests",
        "Requests refused at once (the queue full, or the server draining).",
        "counter",
        lambda c, _: c.rejected,
    ),
    ("prompt_tokens", "Prompt tokens of requests.", "counter", lambda c, _: c.prompt_tokens),
    ("generated_tokens", "Tokens generated.", "counter", lambda c, _: c.generated_tokens),
    (
        "prefill_tokens_saved",
        "Prompt tokens not prefilled thanks to KV-cache reuse.",
        "counter",
        lambda c, _: c.prefill_tokens_saved,
    ),
    ("model_loads", "Successful loads.", "counter", lambda c, _: c.loads),
    ("model_load_failures", "Failed loads.", "counter", lambda c, _: c.load_failures),
    ("model_unloads", "Handles unloaded.", "counter", lambda c, _: c.unloads),
)


def prometheus_text(models: Iterable[Row]) -> str:
    """The models' counters as Prometheus text, from a private registry, in the given order.

    Per model (label ``model``): gauges ``rkllm_api_queued_requests``,
    ``rkllm_api_running_requests``, ``rkllm_api_model_loaded``; counters
    ``rkllm_api_requests_total``, ``rkllm_api_rejected_requests_total``,
    ``rkllm_api_prompt_tokens_total``, ``rkllm_api_generated_tokens_total``,
    ``rkllm_api_prefill_tokens_saved_total``, ``rkllm_api_model_loads_total``,
    ``rkllm_api_model_load_failures_total``, ``rkllm_api_model_unloads_total``.
    Gauge ``rkllm_api_loaded_models``.
    """
    # Imported here so that importing the server does not import prometheus_client.
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    registry = CollectorRegistry()
    registry.register(_Collector(list(models)))
    return generate_latest(registry).decode("utf-8")


class _Collector:
    """A prometheus-client collector over models (name, counters, loaded)."""

    def __init__(self, items: list[Row]) -> None:
        self.items = items

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        items = self.items
        for name, doc, kind, value in _FAMILIES:
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(f"rkllm_api_{name}", doc, labels=["model"])
            else:
                family = GaugeMetricFamily(f"rkllm_api_{name}", doc, labels=["model"])
            for model, counters, loaded in items:
                family.add_metric([model], value(counters, loaded))
            yield family
        yield GaugeMetricFamily(
            "rkllm_api_loaded_models",
            "Models loaded now.",
            sum(loaded for _, _, loaded in items),
        )
