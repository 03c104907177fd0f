"""The fake's threading and lifetime under ThreadSanitizer and LeakSanitizer (plain C)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fake_runtime"))
import build_fake  # noqa: E402

_checked: dict[str, bool] = {}


def require_sanitizer(name: str, tmp_path: Path) -> None:
    """Skip when the C compiler cannot link -fsanitize=<name> here (fail instead under CI)."""
    if name not in _checked:
        src = tmp_path / "probe.c"
        src.write_text("int main(void) { return 0; }\n")
        proc = subprocess.run(
            [*build_fake.compiler(), f"-fsanitize={name}", str(src), "-o", str(tmp_path / "probe")],
            capture_output=True,
            check=False,
        )
        _checked[name] = proc.returncode == 0
    if not _checked[name]:
        if os.environ.get("CI"):
            pytest.fail(f"-fsanitize={name} does not link on this CI machine")
        pytest.skip(f"the C compiler cannot link -fsanitize={name} here")


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_concurrent_run_abort_destroy_is_race_and_leak_free(
    abi: str, sanitizer: str, tmp_path: Path
) -> None:
    """fake_runtime/tests/stress.c: no data race (TSan), no leak (LSan), every invariant holds."""
    require_sanitizer(sanitizer, tmp_path)
    exe = build_fake.build_stress(abi, tmp_path / "stress", sanitizer)
    model = tmp_path / "model.json"
    model.write_text(
        json.dumps(
            {
                "format": "rkllm-fake/1",
                "vocab_size": 4096,
                "hidden_size": 8,
                "decode_ms": 0.05,
                "prefill_ms": 0.01,
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(
        RKLLM_FAKE_QUIET="1",
        TSAN_OPTIONS="halt_on_error=1:exitcode=66",
        ASAN_OPTIONS="detect_leaks=1:exitcode=66",
    )
    proc = subprocess.run(
        [str(exe), str(model)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("ok runs=")


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_bridge_producer_consumer_is_race_and_leak_free(sanitizer: str, tmp_path: Path) -> None:
    """bridge/tests/bridge_stress.c: tokens once and in order, bounded pages, early close."""
    require_sanitizer(sanitizer, tmp_path)
    exe = build_fake.build_bridge_stress(tmp_path / "bridge-stress", sanitizer)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(
        TSAN_OPTIONS="halt_on_error=1:exitcode=66", ASAN_OPTIONS="detect_leaks=1:exitcode=66"
    )
    proc = subprocess.run(
        [str(exe)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "ok"
