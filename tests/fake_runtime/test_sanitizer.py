"""The sanitizer job really runs the ASan/UBSan build (CI sets RKLLM_EXPECT_SANITIZER=1)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rkllm_sdk._fake import library_path
from rkllm_sdk._ffi.loader import bridge_path

pytestmark = pytest.mark.skipif(
    os.environ.get("RKLLM_EXPECT_SANITIZER") != "1", reason="only in the sanitizer job"
)


def test_the_loaded_fake_is_the_sanitized_build(abi: str) -> None:
    """The library under test calls into ASan and UBSan, and the ASan runtime is mapped."""
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(library_path(abi))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "__asan_report_load" in undefined
    assert "__ubsan_handle" in undefined
    assert "libasan" in Path("/proc/self/maps").read_text()


def test_the_loaded_bridge_is_the_sanitized_build() -> None:
    """The SDK's C bridge under test is the ASan/UBSan build too."""
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(bridge_path())],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "__asan_report_load" in undefined
