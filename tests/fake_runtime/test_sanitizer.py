"""The sanitizer job really runs the ASan/UBSan build (CI sets RKLLM_EXPECT_SANITIZER=1)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rkllm_sdk._fake import library_path

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
