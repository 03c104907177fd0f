"""Scenario S1: does the library file embed its version line as literal text? (No handle.)"""

from __future__ import annotations

import re

from ..lowlevel import Runtime, detect_version
from .report import Finding

_VERSION_LINE = re.compile(rb"rkllm-runtime version[^\x00\n]{0,100}")


def version_line(rt: Runtime) -> Finding:
    """What the library says about its version: the line whole, a format string or nothing."""
    data = rt.path.read_bytes()
    lines = [m.group(0).decode("utf-8", "replace") for m in _VERSION_LINE.finditer(data)][:5]
    version = detect_version(rt.path)
    if version is not None:
        observed, matches = f"embedded whole: {version}", True
    elif lines:
        observed, matches = "only a format string (the version is stored apart)", False
    else:
        observed, matches = "no 'rkllm-runtime version' text in the library", False
    return Finding(
        key="version_line",
        assumption="S1",
        ref="docs/assumptions.md (S1); fake_runtime/README.md (Files and build)",
        question="does the library embed its version line as literal text?",
        observed=observed,
        fake="embeds 'rkllm-runtime version: X.Y.Z' whole",
        matches=matches,
        details={"strings": lines, "detected_version": version},
        note="" if matches else "ABI detection cannot tell this runtime's version: pass --abi",
    )
