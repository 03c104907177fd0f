"""What a loaded model's KV cache holds, and how a new prompt reuses it.

The chat engine keeps one :class:`KVRecord` per loaded model (``Loaded.engine_state``,
:func:`kv_record`): exactly the text the cache holds and the rendered conversations it stands
for (:func:`cache_views`: the text, and the same with the latest reply's think block removed,
as chat templates render past replies). A new prompt that starts with one of them sends only
the rest (:func:`continuation`); otherwise the cache is cleared, and a long shared prefix (the
system turn, tools, headers) goes through a prompt-cache file
(:func:`prompt_cache_path`, in ``CACHE_SUBDIR`` of the catalog's cache directory, bounded by
:func:`bound_prompt_caches`). :func:`apply_plan` readies the handle for a :class:`ReusePlan`.

Lines of the system message that change on every request (Home Assistant's
:data:`HOME_ASSISTANT_TIME`) would defeat both: :func:`split_volatile` takes them out, and
:meth:`Volatile.annotated` puts them at the start of a user turn.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ..errors import RKLLMError

if TYPE_CHECKING:
    from ..llm import AsyncLLM
    from .catalog import Loaded

__all__ = [
    "CACHE_SUBDIR",
    "HOME_ASSISTANT_TIME",
    "UNSURE_PROMPT_CACHE",
    "KVRecord",
    "ReusePlan",
    "Volatile",
    "apply_plan",
    "bound_prompt_caches",
    "cache_views",
    "continuation",
    "kv_record",
    "prompt_cache_path",
    "release_prompt_cache",
    "split_volatile",
]

#: Home Assistant's first system line (``homeassistant.helpers.llm.BASE_PROMPT``), rendered
#: anew with the current time for every request of a conversation. A whole line only: the
#: same words inside a line of the user's own instructions are left alone.
HOME_ASSISTANT_TIME = (
    r"(?m)^Current time is \d{1,2}:\d{2}(?::\d{2})?(?: ?[AP]M)?\. "
    r"Today's date is \d{4}-\d{2}-\d{2}\.(?:\n|\Z)"
)

#: ``KVRecord.prompt_cache`` after a load was cancelled: loaded or not, released before the
#: next fresh run (it is no file the engine measured).
UNSURE_PROMPT_CACHE = Path("<a prompt cache, maybe loaded>")

#: The engine's prompt caches: this directory inside the catalog's ``cache_dir`` holds
#: nothing else (the bound deletes its least recently used files).
CACHE_SUBDIR = "chat-prefix-cache"
_CACHE_SUFFIX = ".prompt-cache"


@attrs.define
class KVRecord:
    """What one loaded model's KV cache holds (``Loaded.engine_state``).

    Attributes:
        text: exactly the text in the cache (the prompts sent plus every generated token);
            None when unknown (then the next request clears the cache).
        views: rendered conversations the cache stands for, ``text``'s render first, then
            the same with the latest reply's think block removed. A new prompt that starts
            with one of them sends only the rest.
        tokens: tokens in the cache (as ``kv_cache_size`` reported after the last run).
        prompt_cache: the prompt-cache file loaded on the handle, if any.
        notes: volatile system lines moved into user turns, by message index (see
            :attr:`~.chat_engine.ChatEngine.volatile_patterns`), as the cache holds them.
        lock: held by the request using the handle's cache (a chat run, embeddings).
    """

    text: str | None = None
    views: tuple[str, ...] = ()
    tokens: int = 0
    prompt_cache: Path | None = None
    notes: dict[int, str] = attrs.field(factory=dict)
    lock: anyio.Lock = attrs.field(factory=anyio.Lock, repr=False)

    def forget(self) -> None:
        """The cache's contents are no longer known."""
        self.text = None
        self.views = ()
        self.tokens = 0
        self.notes = {}


def kv_record(loaded: Loaded) -> KVRecord:
    """The loaded model's record (a new, empty one after a load)."""
    state = loaded.engine_state
    if not isinstance(state, KVRecord):
        state = KVRecord()
        loaded.engine_state = state
    return state


@attrs.frozen(kw_only=True)
class ReusePlan:
    """How one prompt reaches the runtime."""

    prompt: str  # the whole rendered prompt
    send: str  # what the runtime gets (prompt, or its remainder)
    base_text: str  # what the cache holds before the run ("" after a clear)
    base_tokens: int
    clear: bool  # clear the KV cache first
    load: Path | None = None  # load this prompt cache first
    save: Path | None = None  # this run saves a prompt cache here
    release: bool = False  # release the loaded prompt cache first (unless it is ``load``)


def continuation(state: KVRecord, prompt: str) -> ReusePlan | None:
    """The plan that sends only the rest of ``prompt`` when it starts with a view of the
    cache (and is longer); None when none fits or the cache's contents are unknown."""
    if state.text is None:
        return None
    for view in state.views:
        if len(prompt) > len(view) and prompt.startswith(view):
            return ReusePlan(
                prompt=prompt,
                send=prompt[len(view) :],
                base_text=state.text,
                base_tokens=state.tokens,
                clear=False,
            )
    return None


def cache_views(full: str, reply_start: int, think: tuple[str, str] | None) -> tuple[str, ...]:
    """What the cache (holding ``full``, the reply from ``reply_start``) stands for:
    ``full``, then ``full`` with the reply's think block cut (as templates render past
    replies), with and without the newlines that followed it. The block opens in the reply,
    or at the very end of the prompt (DeepSeek-R1 opens it, Qwen3 with thinking off writes
    an empty one): a think tag anywhere else (a user typed it) is data."""
    views = [full]
    if think is not None:
        opened, closed = think
        end = full[:reply_start].rstrip()
        if end.endswith(closed) and end[: -len(closed)].rstrip().endswith(opened):
            i = len(end[: -len(closed)].rstrip()) - len(opened)  # an empty block
        elif end.endswith(opened):
            i = len(end) - len(opened)
        else:
            i = full.find(opened, reply_start)
        j = full.rfind(closed)
        if 0 <= i < j:
            head, tail = full[:i], full[j + len(closed) :]
            for view in (head + tail, head + tail.lstrip("\n"), head + tail.lstrip()):
                if view not in views:
                    views.append(view)
    return tuple(views)


async def apply_plan(llm: AsyncLLM, state: KVRecord, plan: ReusePlan) -> None:
    """Ready the handle for ``plan``: clear its KV cache, release a loaded prompt cache the
    plan does not load (always before loading another one), load the plan's.

    A prompt-cache file the runtime refuses (damaged, foreign) is deleted and the run
    prefills everything."""
    if plan.clear:
        state.forget()
        await llm.clear_kv_cache()
        state.text = ""
    if (plan.release or plan.load is not None) and state.prompt_cache != plan.load:
        await release_prompt_cache(llm, state)
    if plan.load is not None and state.prompt_cache != plan.load:
        try:
            await llm.load_prompt_cache(plan.load)
        except RKLLMError:  # a damaged or foreign file: drop it, the run prefills all
            with suppress(OSError):
                plan.load.unlink()
            return
        except BaseException:  # cancelled: the runtime's call may have finished
            state.prompt_cache = UNSURE_PROMPT_CACHE
            raise
        state.prompt_cache = plan.load
    if plan.load is not None:
        with suppress(OSError):
            os.utime(plan.load)  # recently used


async def release_prompt_cache(llm: AsyncLLM, state: KVRecord) -> None:
    """Release the handle's prompt cache, if one is (or may be) loaded. Cancelled midway,
    the record says it may still be loaded (the runtime's call may have run)."""
    if state.prompt_cache is not None:
        state.prompt_cache = UNSURE_PROMPT_CACHE
        await llm.release_prompt_cache()
        state.prompt_cache = None


# ---- the prompt-cache directory -----------------------------------------------------------


def prompt_cache_path(cache_dir: Path, model_name: str, model_path: Path, head: str) -> Path:
    """The prompt-cache file for the shared prefix ``head`` of this model file (its path,
    its modification time), in ``CACHE_SUBDIR`` of ``cache_dir`` (created)."""
    try:
        stamp = str(model_path.stat().st_mtime_ns)
    except OSError:
        stamp = ""
    key = hashlib.sha256(f"{model_path.resolve()}\0{stamp}\0{head}".encode()).hexdigest()[:32]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)
    directory = cache_dir / CACHE_SUBDIR
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{slug}-{key}{_CACHE_SUFFIX}"


def bound_prompt_caches(keep: Path, *, max_files: int, max_bytes: int) -> None:
    """At most ``max_files`` files / ``max_bytes`` bytes in ``keep``'s directory (its
    prompt-cache files); the least recently used deleted first, ``keep`` never."""
    entries = []
    for path in keep.parent.glob(f"*{_CACHE_SUFFIX}"):
        with suppress(OSError):
            st = path.stat()
            entries.append((st.st_mtime_ns, st.st_size, path))
    entries.sort(key=lambda e: (e[2] != keep, -e[0]))  # the new one, then newest first
    total = 0
    for n, (_, size, path) in enumerate(entries):
        total += size
        if path != keep and (n >= max_files or total > max_bytes):
            with suppress(OSError):
                path.unlink()


# ---- volatile system lines ----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Volatile:
    """A conversation whose system message had volatile lines (taken out into ``note``)."""

    messages: tuple[Mapping[str, Any], ...]
    note: str
    last_user: int

    def annotated(self, notes: Mapping[int, str]) -> list[Mapping[str, Any]]:
        """The messages with each note at the start of its user turn."""
        out: list[Mapping[str, Any]] = list(self.messages)
        for i, note in notes.items():
            if 0 <= i < len(out) and out[i].get("role") == "user":
                out[i] = {**out[i], "content": f"{note}\n\n{out[i].get('content', '')}"}
        return out


def split_volatile(
    patterns: Sequence[re.Pattern[str]], messages: Sequence[Mapping[str, Any]]
) -> Volatile | None:
    """The system message's lines matching ``patterns``, to move into the newest user turn;
    None when there are none (or no system message, or no user turn)."""
    if not patterns or not messages or messages[0].get("role") != "system":
        return None
    content = str(messages[0].get("content", ""))
    found = [m.group(0) for p in patterns for m in p.finditer(content)]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not found or not users:
        return None
    stripped = content
    for p in patterns:
        stripped = p.sub("", stripped)
    system = {**messages[0], "content": stripped.strip("\n")}
    note = "\n".join(f.strip() for f in found)
    return Volatile(messages=(system, *messages[1:]), note=note, last_user=users[-1])
