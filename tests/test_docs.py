"""The docs site: every public name is in the API reference, and the site builds strictly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import rkllm_sdk as rk
from rkllm_sdk import errors, lowlevel, metrics, testing

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def documented() -> set[str]:
    names = set()
    for page in (DOCS / "reference").glob("*.md"):
        names |= set(re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.M))
    return names


def test_every_public_name_is_in_the_api_reference() -> None:
    """Every public name of the package and its public modules has an API reference entry."""
    have = documented()
    public = {f"rkllm_sdk.{n}" for n in rk.__all__ if n != "__version__"}
    for module in (errors, lowlevel, metrics, testing):
        for n in module.__all__:
            if f"rkllm_sdk.{n}" not in public:  # re-exported ones are documented at the top
                public.add(f"{module.__name__}.{n}")
    public.add("rkllm_sdk.testing.plugin.FakeRuntime")
    missing = sorted(public - have)
    assert missing == []


def test_reference_names_exist() -> None:
    """No page documents a name that is gone."""
    import importlib  # noqa: PLC0415

    for dotted in documented():
        module, _, attr = dotted.rpartition(".")
        try:
            obj = importlib.import_module(dotted)
        except ImportError:
            obj = getattr(importlib.import_module(module), attr)
        assert obj is not None


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """mkdocs build --strict succeeds and produces the reference pages."""
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "site" / "reference" / "llm" / "index.html").exists()
