"""`rkllm doctor --probe MODEL` as a subprocess on the fake runtime: text, JSON, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_cli import env, rkllm
from tests.probe.test_probe import KEYS, probe_model

REPORT_LINE = (
    "Please report this output: open an issue at the rkllm-sdk repository with the output "
    "of `rkllm doctor --probe MODEL --json` (and your board, SoC and runtime version)."
)
FINDING_FIELDS = {
    "key",
    "assumption",
    "ref",
    "question",
    "observed",
    "fake",
    "matches",
    "details",
    "note",
}


@pytest.mark.parametrize("waiting_text", ["held", "partial"])
def test_probe_json_is_complete(abi: str, waiting_text: str, tmp_path: Path) -> None:
    """`--json` prints one valid object with every finding, the doctor report and the hint."""
    m = probe_model(tmp_path, waiting_text)
    r = rkllm("doctor", "--probe", str(m), "--runtime", "fake", "--abi", abi, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {
        "runtime",
        "model",
        "findings",
        "counts",
        "hung",
        "ok",
        "duration_s",
        "report",
        "doctor",
    }
    assert out["runtime"]["abi"] == abi and out["runtime"]["fake"] is True
    assert out["model"] == str(m) and out["ok"] is True and out["hung"] is False
    assert out["report"] == REPORT_LINE and out["doctor"]["abi"] == abi
    assert [f["key"] for f in out["findings"]] == KEYS
    assert all(set(f) == FINDING_FIELDS for f in out["findings"])
    waiting = next(f for f in out["findings"] if f["key"] == "waiting_text")
    differ = 0 if waiting_text == "held" else 1
    assert waiting["matches"] is (waiting_text == "held")
    assert out["counts"] == {"match": len(KEYS) - differ, "differ": differ, "unknown": 0}


def test_probe_text(abi: str, tmp_path: Path) -> None:
    """The text output: the runtime, each finding with its assumption and verdict, the hint."""
    m = probe_model(tmp_path, "partial")
    r = rkllm("doctor", "--probe", str(m), "--runtime", "fake", "--abi", abi)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"probing fake runtime {abi}.")
    assert lines[2] == f"model {m}"
    assert lines[-1] == REPORT_LINE
    assert lines[-2].startswith(f"{len(KEYS)} findings: {len(KEYS) - 1} as the fake, 1 differ, ")
    verdicts = ("  ✓ as the fake", "  ✗ differs from the fake", "  ? unknown")
    heads = [line for line in lines if line.endswith(verdicts)]
    assert len(heads) == len(KEYS)
    assert "A11     waiting_text: partial bytes  ✗ differs from the fake" in lines
    assert any(h.startswith("S1      version_line: embedded whole: ") for h in heads)
    assert sum(h.endswith("✓ as the fake") for h in heads) == len(KEYS) - 1
    assert (
        '        note: the fake does this with "waiting_text": "partial" in the model file' in lines
    )


def test_probe_usage_errors(tmp_path: Path) -> None:
    """`--probe` with `--model` is a usage error; a model the runtime refuses exits 1."""
    m = probe_model(tmp_path)
    r = rkllm("doctor", "--probe", str(m), "--model", str(m), "--runtime", "fake")
    assert r.returncode == 2
    assert r.stderr == "rkllm doctor: error: --probe takes the model file: drop --model\n"
    r = rkllm("doctor", "--probe", str(tmp_path / "missing.json"), "--runtime", "fake")
    assert r.returncode == 1 and "ModelLoadError" in r.stderr


HANGING = """
import sys, threading
from rkllm_sdk import _native
from rkllm_sdk._probe import guard
from rkllm_sdk.cli import main
real = _native.destroy
def stuck(h):
    if _native.is_running(h):
        threading.Event().wait()
    real(h)
_native.destroy = stuck
guard.GRACE_S = 0.3
sys.exit(main(sys.argv[1:]))
"""


def test_a_hung_runtime_exits_1(tmp_path: Path) -> None:
    """A destroy that never returns: the probe says "hung" and exits 1 instead of hanging."""
    m = probe_model(tmp_path)
    r = subprocess.run(
        [sys.executable, "-c", HANGING, "doctor", "--probe", str(m), "--runtime", "fake"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=30,
        check=False,
    )
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert (
        "-       destroy_while_running: hung: rkllm_destroy did not return within 0.3 s  "
        "✗ differs from the fake" in lines
    )
    assert "the runtime hung: the probe stopped there" in lines and lines[-1] == REPORT_LINE
