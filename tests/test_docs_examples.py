"""Every ``python`` block in the docs runs on the fake runtime, and every ``rkllm`` line parses.

Each page's blocks run in sequence in one namespace, as a reader following the page would
run them, in a subprocess per page and runtime ABI (1.2 and 1.3), in a temporary directory,
with ``RKLLM_FAKE_QUIET=1``. Top-level ``await`` works: blocks are compiled with
``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT`` and awaited on one event loop per page, so an ``llm``
loaded in one block serves the next. Pages included with ``--8<--`` contribute the blocks of
the included file. README.md's example is tested in ``tests/test_package.py``.

Markers, in an HTML comment on the lines just before a block's opening fence (blank lines
allowed in between; several markers may stand one after the other):

- ``<!-- docs-test: skip (reason) -->``: not run (a board, a real ``.rkllm`` file, ...).
- ``<!-- docs-test: xfail (bug: ...) -->``: shows a bug in the code; it must fail (and the
  test fails when it passes, so the marker goes once the bug is fixed).
- ``<!-- docs-test: abi 1.3 (reason) -->``: runs on that runtime ABI only.
- ``<!-- docs-test: setup`` + code + ``-->``: hidden code run just before the block.

A page with ``<!-- docs-test: notebook -->`` anywhere runs every block inside the running
event loop, as Jupyter runs cells. A block that calls ``print()`` must print something.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rkllm_sdk.cli._parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ABIS = ("1.2", "1.3")
PAGE_TIMEOUT_S = 40.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<kind>\w+)(?P<rest>.*?)-->", re.S)
_SNIPPET = re.compile(r"^[ \t]*--8<--[ \t]+\"(?P<path>[^\"]+)\"[ \t]*$", re.M)
_REASON = re.compile(r"^\s*\((?P<reason>.+)\)\s*$", re.S)
_ABI = re.compile(r"^\s*(?P<abi>\d+\.\d+)\s*\((?P<reason>.+)\)\s*$", re.S)
_SHELL = {"bash", "sh", "shell", "console", "text", "sh-session"}
_PYTHON = {"python", "py", "python3"}


@dataclass
class Block:
    """One fenced block of a page, with its docs-test markers."""

    source: str  # the file it is written in, relative to the repository
    line: int  # the line of its opening fence (1-based)
    lang: str
    code: str
    mode: str = "run"  # "run", "skip" or "xfail"
    reason: str = ""
    abis: tuple[str, ...] = ABIS
    setup: str = ""
    notebook: bool = False
    markers: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _markers_before(lines: list[str], index: int) -> list[tuple[str, str]]:
    """The docs-test markers in the comments just above ``lines[index]`` (an opening fence)."""
    i = index - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    found: list[tuple[str, str]] = []
    while i >= 0 and lines[i].rstrip().endswith("-->"):
        start = i
        while start >= 0 and "<!--" not in lines[start]:
            start -= 1
        if start < 0:
            break
        comment = "\n".join(lines[start : i + 1])
        match = _MARKER.search(comment)
        if match is None:
            break
        found.append((match["kind"], match["rest"]))
        i = start - 1
        while i >= 0 and not lines[i].strip():
            i -= 1
    return found[::-1]


def parse_blocks(
    text: str, source: str, *, notebook: bool = False, first_line: int = 1
) -> list[Block]:
    """Every fenced block of a Markdown text, with the markers above it applied."""
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip()
        lang = info.split()[0].lstrip(".{").rstrip("}").lower() if info else ""
        end = i + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence) and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
        block = Block(source, first_line + i, lang, "\n".join(body) + "\n", notebook=notebook)
        for kind, rest in _markers_before(lines, i):
            apply_marker(block, kind, rest)
        blocks.append(block)
        i = end + 1
    return blocks


def apply_marker(block: Block, kind: str, rest: str) -> None:
    """Apply one ``docs-test`` marker to a block; an unknown or malformed one is an error."""
    block.markers.append(kind)
    if kind in ("skip", "xfail"):
        reason = _REASON.match(rest)
        if reason is None:
            raise ValueError(f"{block.where}: `docs-test: {kind}` needs a (reason)")
        block.mode, block.reason = kind, " ".join(reason["reason"].split())
    elif kind == "abi":
        abi = _ABI.match(rest)
        if abi is None or abi["abi"] not in ABIS:
            raise ValueError(f"{block.where}: `docs-test: abi` needs one of {ABIS} and a (reason)")
        block.abis = (abi["abi"],)
        block.reason = block.reason or " ".join(abi["reason"].split())
    elif kind == "setup":
        block.setup += textwrap.dedent(rest.lstrip(" \t").removeprefix("\n"))
    elif kind != "notebook":
        raise ValueError(f"{block.where}: unknown marker `docs-test: {kind}`")


def pages() -> list[Path]:
    """Every Markdown page of the docs site."""
    return sorted(DOCS.rglob("*.md"))


def page_blocks(page: Path) -> list[Block]:
    """The blocks of a page, those of the files it includes (``--8<--``) in their place."""
    text = page.read_text(encoding="utf-8")
    notebook = "<!-- docs-test: notebook -->" in text
    source = page.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    pos = 0
    for snippet in _SNIPPET.finditer(text):
        line = text.count("\n", 0, pos) + 1
        blocks += parse_blocks(
            text[pos : snippet.start()], source, notebook=notebook, first_line=line
        )
        included = (ROOT / snippet["path"]).read_text(encoding="utf-8")
        blocks += parse_blocks(included, snippet["path"], notebook=notebook)
        pos = snippet.end()
    line = text.count("\n", 0, pos) + 1
    return blocks + parse_blocks(text[pos:], source, notebook=notebook, first_line=line)


def python_pages() -> list[str]:
    """The pages (relative to docs/) with at least one python block."""
    return [
        p.relative_to(DOCS).as_posix()
        for p in pages()
        if any(b.lang in _PYTHON for b in page_blocks(p))
    ]


# ---- running a page ---------------------------------------------------------------------

# The subprocess: runs a page's blocks in one namespace on one event loop, writes results.
_DRIVER = r"""
import ast, asyncio, contextlib, faulthandler, io, json, sys, traceback

spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
faulthandler.dump_traceback_later(spec["timeout"], exit=True)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def run(source, filename, line, notebook):
    # pad so that tracebacks give the line in the Markdown file
    code = compile("\n" * line + source, filename, "exec", flags=FLAGS)
    if notebook:
        async def cell():
            result = eval(code, namespace)
            if asyncio.iscoroutine(result):
                await result
        loop.run_until_complete(cell())
    else:
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            loop.run_until_complete(result)


results = []
for block in spec["blocks"]:
    if block["mode"] == "skip" or spec["abi"] not in block["abis"]:
        results.append({"status": "skipped", "output": "", "error": ""})
        continue
    out = io.StringIO()
    error = ""
    try:
        with contextlib.redirect_stdout(out):
            if block["setup"]:
                run(block["setup"], block["source"] + " (setup)", block["line"], block["notebook"])
            run(block["code"], block["source"], block["line"], block["notebook"])
    except BaseException as exc:
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__)
            if f.filename != "<string>" and "/asyncio/" not in f.filename
        ]
        error = "".join(
            traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
        )
    status = "failed" if error else "passed"
    results.append({"status": status, "output": out.getvalue(), "error": error})
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f)
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(results, f)
sys.stdout.flush()
"""


@dataclass
class Outcome:
    """What happened to one block under one ABI."""

    block: Block
    abi: str
    status: str  # "passed", "failed", "skipped", or "missing" (the process died first)
    output: str
    error: str


def run_page(page: str, abi: str) -> tuple[list[Outcome], str, float]:
    """Run a page's python blocks under ``abi``; the outcomes, the process's stderr, seconds."""
    blocks = [b for b in page_blocks(DOCS / page) if b.lang in _PYTHON]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_")}
    env.update(RKLLM_FAKE_QUIET="1", RKLLM_ABI=abi, PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rkllm-docs-") as tmp:
        spec_path, results_path = Path(tmp, ".spec.json"), Path(tmp, ".results.json")
        spec = {"abi": abi, "timeout": PAGE_TIMEOUT_S - 2, "blocks": [asdict(b) for b in blocks]}
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _DRIVER, str(spec_path), str(results_path)],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=PAGE_TIMEOUT_S,
                check=False,
            )
            stderr = proc.stderr
        except subprocess.TimeoutExpired as exc:
            stderr = f"timed out after {PAGE_TIMEOUT_S} s: {exc.stderr!r}"
        raw: list[dict[str, str]] = (
            json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else []
        )
    outcomes = [
        Outcome(
            b, abi, **(raw[i] if i < len(raw) else {"status": "missing", "output": "", "error": ""})
        )
        for i, b in enumerate(blocks)
    ]
    return outcomes, stderr, time.monotonic() - start


# The testing guide's blocks are a test module: they also run under pytest, with the plugin.
TESTING_GUIDE = "guides/testing.md"


def run_testing_guide() -> subprocess.CompletedProcess[str]:
    """The testing guide's python blocks as one test module, run by pytest in a temp dir."""
    code = "\n\n".join(
        b.code for b in page_blocks(DOCS / TESTING_GUIDE) if b.lang in _PYTHON and b.mode == "run"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_")}
    env.update(RKLLM_FAKE_QUIET="1", PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryDirectory(prefix="rkllm-docs-") as tmp:
        Path(tmp, "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        Path(tmp, "test_guide.py").write_text(code, encoding="utf-8")
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_guide.py"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT_S,
            check=False,
        )


PageRuns = dict[tuple[str, str], tuple[list[Outcome], str, float]]


@pytest.fixture(scope="module")
def runs() -> tuple[PageRuns, subprocess.CompletedProcess[str]]:
    """Every page with python blocks under each ABI, and the testing guide under pytest, in
    parallel subprocesses."""
    jobs = [(page, abi) for page in python_pages() for abi in ABIS]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        guide = pool.submit(run_testing_guide)
        done = list(pool.map(lambda job: run_page(*job), jobs))
        return dict(zip(jobs, done, strict=True)), guide.result()


@pytest.fixture(scope="module")
def page_runs(runs: tuple[PageRuns, subprocess.CompletedProcess[str]]) -> PageRuns:
    """The outcomes of every page's blocks, by (page, ABI)."""
    return runs[0]


def _describe(o: Outcome, stderr: str) -> str:
    if o.status == "missing":
        return f"{o.block.where} (ABI {o.abi}): never ran; the page's process said:\n{stderr}"
    return f"{o.block.where} (ABI {o.abi}):\n{o.error}"


# Pages this test's author could not edit (another owner), whose blocks do not run yet. Strict:
# once the page's blocks run, the test fails until its entry here is removed.
PENDING_PAGES: dict[str, str] = {}


def _page_params() -> list[Any]:
    return [
        pytest.param(
            page,
            marks=pytest.mark.xfail(
                strict=True,
                reason=f"pending: {PENDING_PAGES[page]} (drop it from PENDING_PAGES once fixed)",
            ),
        )
        if page in PENDING_PAGES
        else page
        for page in python_pages()
    ]


@pytest.mark.parametrize("page", _page_params())
def test_page_blocks_run(page: str, page_runs: PageRuns) -> None:
    """Every unmarked python block of the page runs (and prints, if it prints); xfail ones fail."""
    problems: list[str] = []
    for abi in ABIS:
        outcomes, stderr, _ = page_runs[page, abi]
        for o in outcomes:
            if o.status == "skipped":
                continue
            if o.block.mode == "xfail":
                if o.status == "passed":
                    problems.append(f"{o.block.where} (ABI {o.abi}) is marked xfail but passes")
            elif o.status != "passed":
                problems.append(_describe(o, stderr))
            elif re.search(r"\bprint\(", o.block.code) and not o.output.strip():
                problems.append(f"{o.block.where} (ABI {o.abi}) calls print() but prints nothing")
        if re.search(r"Traceback|Exception ignored|Warning:", stderr):
            problems.append(f"{page} (ABI {abi}): the process wrote to stderr:\n{stderr}")
    assert not problems, "\n\n".join(problems)


def test_testing_guide_passes_under_pytest(
    runs: tuple[PageRuns, subprocess.CompletedProcess[str]],
) -> None:
    """The testing guide's test module passes under pytest with the plugin: both ABIs, both
    anyio backends."""
    proc = runs[1]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = sum(
        len(re.findall(r"^async def test_", b.code, re.M))
        for b in page_blocks(DOCS / TESTING_GUIDE)
        if b.lang in _PYTHON
    )
    assert f"{tests * len(ABIS) * 2} passed" in proc.stdout, proc.stdout


def test_skipped_and_xfailed_blocks_are_listed(
    page_runs: PageRuns,
) -> None:
    """Skipped, one-ABI and xfail blocks have reasons; the summary lists them with counts."""
    counts = {"run": 0, "skip": 0, "xfail": 0, "one ABI": 0}
    listing = []
    for page in python_pages():
        for block in (b for b in page_blocks(DOCS / page) if b.lang in _PYTHON):
            kind = "one ABI" if block.mode == "run" and block.abis != ABIS else block.mode
            counts[kind] += 1
            if kind != "run":
                assert block.reason, f"{block.where}: {kind} without a reason"
                listing.append(f"  {kind:7} {block.where}: {block.reason}")
    listing += [f"  pending {page}: {why}" for page, why in PENDING_PAGES.items()]
    elapsed = max(t for _, _, t in page_runs.values())
    print(f"\ndocs blocks: {counts} (slowest page {elapsed:.1f} s)", *listing, sep="\n")
    assert counts["run"] + counts["one ABI"] > counts["skip"] + counts["xfail"]


# ---- markers -------------------------------------------------------------------------------


def test_markers_parse() -> None:
    """The marker syntax: skip and xfail with reasons, abi, setup code; unknown ones refused."""
    text = textwrap.dedent(
        """\
        <!-- docs-test: skip (needs a board) -->
        ```python
        a = 1
        ```

        <!-- docs-test: setup
        x = 2
        -->
        <!-- docs-test: abi 1.3 (per-run max_new_tokens) -->

        ```python
        b = x
        ```
        """
    )
    first, second = parse_blocks(text, "page.md")
    assert (first.mode, first.reason, first.line, first.code) == (
        "skip",
        "needs a board",
        2,
        "a = 1\n",
    )
    assert (second.mode, second.abis, second.setup.strip()) == ("run", ("1.3",), "x = 2")
    with pytest.raises(ValueError, match="unknown marker"):
        parse_blocks("<!-- docs-test: skipp (x) -->\n```python\n```\n", "page.md")
    with pytest.raises(ValueError, match="needs a"):
        parse_blocks("<!-- docs-test: skip -->\n```python\n```\n", "page.md")


# ---- rkllm command lines -------------------------------------------------------------------

_SPLIT = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "<", "&"}


def rkllm_commands() -> Iterator[tuple[str, list[str]]]:
    """``(where, argv)`` of each ``rkllm`` command line in the docs: in shell blocks, and in
    inline code that is a whole command (not a synopsis with ``[options]``)."""
    for page in [*pages(), ROOT / "README.md"]:
        for block in page_blocks(page):
            if block.lang not in _SHELL:
                continue
            for n, line in enumerate(block.code.splitlines(), start=block.line + 1):
                yield from _commands(f"{block.source}:{n}", line.removeprefix("$ "))
        text = page.read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), start=1):
            for span in re.findall(r"`((?:\S*/)?rkllm [^`]*)`", line):
                if "[" not in span and "..." not in span.replace('"..."', ""):
                    yield from _commands(f"{page.relative_to(ROOT).as_posix()}:{n}", span)


def _commands(where: str, line: str) -> Iterator[tuple[str, list[str]]]:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return
    segment: list[str] = []
    for word in [*words, ";"]:
        if word not in _SPLIT:
            segment.append(word)
            continue
        if segment and Path(segment[0]).name == "rkllm":
            yield where, segment[1:]
        elif segment[1:3] == ["-m", "rkllm_sdk"] and Path(segment[0]).name.startswith("python"):
            yield where, segment[3:]
        segment = []
    return


def test_rkllm_command_lines_parse() -> None:
    """Every ``rkllm ...`` command line in the docs parses with the command's own parser."""
    found = list(rkllm_commands())
    assert len(found) >= 5
    bad = []
    for where, argv in found:
        # `rkllm run` alone in prose names the command: check the name (its --help)
        args = [*argv, "--help"] if len(argv) == 1 else argv
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                build_parser().parse_args(args)
        except SystemExit as exc:
            if exc.code not in (0, None):
                bad.append(f"{where}: rkllm {shlex.join(argv)}")
    assert not bad, "\n".join(bad)
