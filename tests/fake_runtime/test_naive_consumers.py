"""Programs written for the real runtime read text from NORMAL callbacks only and decode each
on its own as strict UTF-8 (the vendor's C demo and Flask server, rkllama): by default the
fake loses them nothing; with "waiting_text": "partial" they demonstrably lose bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkllm_sdk._fake import demo_model_path, library_path

from . import naive_ctypes
from .driver import Driver

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fake_runtime"))
import build_fake  # noqa: E402

SOURCE = ROOT / "fake_runtime" / "tests" / "naive_consumer.c"
_built: dict[str, Path] = {}


def demo_reply() -> str:
    """The demo model's reply to "Hello" (it ends in "你好 🙂")."""
    body = json.loads(demo_model_path().read_text(encoding="utf-8"))
    reply = str(body["script"][0]["reply"])
    assert "你好 🙂" in reply
    return reply


def demo_model(tmp_path: Path, waiting_text: str) -> Path:
    """The demo model at full speed, with the given "waiting_text"."""
    body = json.loads(demo_model_path().read_text(encoding="utf-8"))
    body.update(decode_ms=0, prefill_ms=0, waiting_text=waiting_text)
    path = tmp_path / f"demo-{waiting_text}.json"
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return path


def run_c_consumer(
    abi: str, model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[bytes, int]:
    """The C consumer's kept bytes and its count of rejected NORMAL texts."""
    if abi not in _built:
        out = tmp_path_factory.mktemp("naive") / f"naive-{abi}"
        _built[abi] = build_fake.build_test_program(abi, SOURCE, out, library=library_path(abi))
    proc = subprocess.run(
        [str(_built[abi]), str(model), "Hello"],
        capture_output=True,
        env=dict(os.environ, RKLLM_FAKE_QUIET="1"),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    rejected = int(proc.stderr.decode().strip().rsplit("rejected=", 1)[1])
    return proc.stdout, rejected


def test_c_consumer_reading_normal_only_gets_the_whole_demo_reply(
    abi: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A C program keeping only NORMAL texts, each strict UTF-8 alone, gets the whole demo reply."""
    data, rejected = run_c_consumer(abi, demo_model(tmp_path, "held"), tmp_path_factory)
    assert (data, rejected) == (demo_reply().encode(), 0)


def test_c_consumer_loses_bytes_under_partial_waiting_text(
    abi: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With "waiting_text": "partial" the same C program rejects split texts and loses bytes."""
    data, rejected = run_c_consumer(abi, demo_model(tmp_path, "partial"), tmp_path_factory)
    assert rejected > 0
    assert data != demo_reply().encode()
    assert "你好 🙂" not in data.decode("utf-8")


def test_ctypes_consumer_reading_normal_only_gets_the_whole_demo_reply(
    drv: Driver, tmp_path: Path
) -> None:
    """A plain-ctypes callback decoding each NORMAL text alone (rkllama) gets the demo reply."""
    reading = naive_ctypes.read_reply(drv.abi, demo_model(tmp_path, "held"), "Hello")
    assert (reading.text, reading.rejected) == (demo_reply(), 0)


def test_ctypes_consumer_loses_bytes_under_partial_waiting_text(
    drv: Driver, tmp_path: Path
) -> None:
    """With "waiting_text": "partial" the same ctypes callback fails on split texts, loses bytes."""
    reading = naive_ctypes.read_reply(drv.abi, demo_model(tmp_path, "partial"), "Hello")
    assert reading.rejected > 0
    assert reading.text != demo_reply()
    assert "你好 🙂" not in reading.text
