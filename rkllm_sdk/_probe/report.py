"""What the probe reports: a :class:`Finding` per assumption, the :class:`ProbeReport`, JSON."""

from __future__ import annotations

from typing import Any

import attrs

#: Where to send the output.
REPORT_HINT = (
    "Please report this output: open an issue at the rkllm-sdk repository with the output "
    "of `rkllm doctor --probe MODEL --json` (and your board, SoC and runtime version)."
)


@attrs.frozen(kw_only=True)
class Finding:
    """What the probe saw for one assumption.

    Attributes:
        key: a stable name (``waiting_text``, ``is_running_polarity``, ...).
        assumption: its id in ``fake_runtime/README.md`` (``A11``) or ``docs/assumptions.md``
            (``S1``), or ``-`` for behaviour the README states without numbering it.
        ref: where the fake's choice is written down.
        question: what was asked of the runtime.
        observed: what this runtime did, in a few words.
        fake: what the fake runtime does (its default choice).
        matches: whether ``observed`` is the fake's choice; None when the probe could not tell.
        details: the raw observations (JSON values).
        note: anything the reader should know (how to reproduce it on the fake, why unknown).
    """

    key: str
    assumption: str
    ref: str
    question: str
    observed: str
    fake: str
    matches: bool | None
    details: dict[str, Any] = attrs.field(factory=dict)  # Any: JSON values
    note: str = ""

    def to_dict(self) -> dict[str, Any]:  # Any: JSON values
        """The finding as JSON-ready data."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class ProbeReport:
    """Every finding of :func:`~rkllm_sdk._probe.run_probe`, and where they were observed."""

    runtime_path: str
    runtime_version: str | None
    abi: str
    is_fake: bool
    model: str
    findings: tuple[Finding, ...]
    hung: bool  # a call never returned: the probe stopped there
    duration_s: float

    @property
    def ok(self) -> bool:
        """True when every step ran and nothing hung (differences from the fake are fine)."""
        return not self.hung

    @property
    def counts(self) -> dict[str, int]:
        """How many findings match the fake, differ from it, or could not tell."""
        return {
            "match": sum(f.matches is True for f in self.findings),
            "differ": sum(f.matches is False for f in self.findings),
            "unknown": sum(f.matches is None for f in self.findings),
        }

    def to_dict(self) -> dict[str, Any]:  # Any: JSON values
        """The report as JSON-ready data, with counts and where to report it."""
        return {
            "runtime": {
                "path": self.runtime_path,
                "version": self.runtime_version,
                "abi": self.abi,
                "fake": self.is_fake,
            },
            "model": self.model,
            "findings": [f.to_dict() for f in self.findings],
            "counts": self.counts,
            "hung": self.hung,
            "ok": self.ok,
            "duration_s": round(self.duration_s, 3),
            "report": REPORT_HINT,
        }
