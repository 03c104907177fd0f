"""Type checking of the public API: mypy rejects a misspelled run option everywhere."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "typing_rejects" / "misspelled_options.py"


def test_mypy_rejects_misspelled_options_on_every_entry_point() -> None:
    """mypy --strict reports an error on exactly the lines marked `# E` (each entry point of
    the async client, the chat session and both blocking twins) and nowhere else."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    expected = {n for n, line in enumerate(lines, start=1) if "  # E" in line}
    out, _, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary", str(SAMPLE)]
    )
    reported = {
        int(line.split(":")[1])
        for line in out.splitlines()
        if line.split(":")[0].endswith(SAMPLE.name) and ": error:" in line
    }
    assert status == 1
    assert len(expected) == 14
    assert reported == expected, out
