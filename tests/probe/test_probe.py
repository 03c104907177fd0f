"""The runtime probe (``rkllm_sdk._probe``) on the fake runtime: it reports the fake's choices."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rkllm_sdk import _native as native
from rkllm_sdk import _probe
from rkllm_sdk._ffi.loader import load_runtime
from rkllm_sdk._probe import guard
from rkllm_sdk.testing import FakeModel

KEYS = [
    "version_line",
    "callback_thread",
    "is_running_in_finish",
    "terminal_callback",
    "perf_at_finish",
    "waiting_text",
    "is_running_polarity",
    "abort_before_run",
    "abort_latency",
    "kv_cache",
    "pause_resume",
    "destroy_while_running",
]
ASSUMPTIONS = {
    "version_line": "S1",
    "is_running_in_finish": "A4",
    "terminal_callback": "A12",
    "waiting_text": "A11",
    "abort_latency": "A12, S6",
    "kv_cache": "A14",
    "pause_resume": "A12",
}


def probe_model(tmp_path: Path, waiting_text: str = "held", **replies: str) -> Path:
    """A fast fake model answering each probe prompt (a greeting with CJK and an emoji)."""
    script: dict[str, str] = {
        "Hello": "Hi! 你好 🙂 é.",
        "OK": "OK.",
        "Count": " ".join(str(i) for i in range(1, 60)),
        **replies,
    }
    model = FakeModel(replies=script, decode_ms=2, waiting_text=waiting_text)
    return model.write(tmp_path / f"probe-{waiting_text}.json")


@pytest.fixture
def no_leaks(abi: str) -> Any:
    """Asserts the probe left no handle, allocation or bridge object behind."""
    rt = load_runtime("fake", abi=abi)
    before = native.fake_stats(rt), native.bridge_live_objects(rt)
    yield
    stats, bridge = native.fake_stats(rt), native.bridge_live_objects(rt)
    assert stats["live_handles"] == before[0]["live_handles"]
    assert stats["live_allocations"] == before[0]["live_allocations"]
    assert bridge == before[1]


@pytest.mark.parametrize("waiting_text", ["held", "partial"])
def test_probe_reports_the_fakes_choices(
    abi: str, waiting_text: str, tmp_path: Path, no_leaks: None
) -> None:
    """On the fake every finding matches its choice; WAITING texts follow the model's reading."""
    started = time.monotonic()
    report = _probe.run_probe(probe_model(tmp_path, waiting_text), runtime="fake", abi=abi)
    assert time.monotonic() - started < 5
    assert report.ok and not report.hung and report.abi == abi and report.is_fake
    assert [f.key for f in report.findings] == KEYS
    found = {f.key: f for f in report.findings}
    for key, number in ASSUMPTIONS.items():
        assert found[key].assumption == number
    waiting = found.pop("waiting_text")
    assert all(f.matches is True for f in found.values()), [
        (f.key, f.observed) for f in found.values() if f.matches is not True
    ]
    assert waiting.details["waiting_callbacks"] >= 1
    assert waiting.details["reply"] == "Hi! 你好 🙂 é."
    if waiting_text == "held":
        assert (waiting.observed, waiting.matches) == ('"" (empty)', True)
        assert waiting.details["waiting_texts"] == ["empty"]
        assert waiting.details["normal_texts_decode_alone"] is True
    else:
        assert (waiting.observed, waiting.matches) == ("partial bytes", False)
        assert '"waiting_text": "partial"' in waiting.note
        assert waiting.details["normal_texts_decode_alone"] is False
    during, idle = (1, 0) if abi == "1.3" else (0, -1)
    polarity = found["is_running_polarity"]
    assert (polarity.details["during"], polarity.details["after"]) == (during, idle)
    assert found["is_running_in_finish"].details["inside_finish"] == [during]
    assert found["version_line"].details["detected_version"] == report.runtime_version
    kv = found["kv_cache"].details
    assert kv["sizes"][2] == 0 and kv["first_equals_prefill_plus_generated"] is True


def test_waiting_is_unknown_without_multibyte_characters(tmp_path: Path) -> None:
    """A reply of ASCII only cannot show what WAITING carries: unknown, with a hint why."""
    report = _probe.run_probe(
        probe_model(tmp_path, Hello="Hi there, plain ASCII."), runtime="fake", abi="1.3"
    )
    waiting = next(f for f in report.findings if f.key == "waiting_text")
    assert waiting.matches is None and waiting.observed.startswith("unknown")
    assert "CJK" in waiting.note


def test_a_hung_destroy_is_reported_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destroy that never returns during a run ends the probe with a "hung" finding."""
    rt = load_runtime("fake", abi="1.3")
    handles = native.fake_stats(rt)["live_handles"]
    release = threading.Event()
    real_destroy = native.destroy

    def stuck(h: native.NativeHandle) -> None:
        if native.is_running(h):
            release.wait()  # a runtime that deadlocks here
        real_destroy(h)

    monkeypatch.setattr(native, "destroy", stuck)
    monkeypatch.setattr(guard, "GRACE_S", 0.3)
    try:
        report = _probe.run_probe(probe_model(tmp_path), runtime="fake", abi="1.3")
    finally:
        release.set()  # let the test's thread finish the destroy
    assert report.hung and not report.ok
    last = report.findings[-1]
    assert last.key == "destroy_while_running" and last.matches is False
    assert last.observed == "hung: rkllm_destroy did not return within 0.3 s"
    assert report.to_dict()["hung"] is True
    deadline = time.monotonic() + 5  # released, the destroy completes: the channel let go
    while native.fake_stats(rt)["live_handles"] > handles and time.monotonic() < deadline:
        time.sleep(0.01)
    assert native.fake_stats(rt)["live_handles"] == handles
