"""The options a run takes, as typed keyword arguments.

``AsyncLLM.stream`` / ``generate`` / ``generate_batch``, the chat session's ``stream`` /
``send`` / ``send_tool_results`` and the blocking twin all take ``**options`` typed with
these ``TypedDict`` s (PEP 692), so a type checker rejects a misspelled option on every one
of them, and the server's wire formats map onto one list of names.

>>> options: RunOptions = {"max_new_tokens": 32, "stop": ["\\n\\n"]}
>>> sorted(options)
['max_new_tokens', 'stop']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypedDict

from .models import Sampling

__all__ = ["RunOptions", "TurnOptions"]


class TurnOptions(TypedDict, total=False):
    """What any run takes, a chat turn included (every key optional).

    Attributes:
        max_new_tokens: per-run limit of generated tokens (runtime 1.3; on 1.2 it is set
            once in ``ModelParams``).
        sampling: per-run sampling (runtime 1.3).
        lora: the name of a loaded LoRA adapter.
        prompt_cache: save this run's prefill to this path (load it later with
            ``load_prompt_cache``).
        stop: strings that end the reply (trimmed from the text); a plain string is one
            stop sequence.
        wait: False raises :class:`BusyError` instead of queueing for the handle.
    """

    max_new_tokens: int | None
    sampling: Sampling | None
    lora: str | None
    prompt_cache: str | os.PathLike[str] | None
    stop: str | Sequence[str]
    wait: bool


class RunOptions(TurnOptions, total=False):
    """What a run on the handle takes: :class:`TurnOptions` plus how the prompt is sent.

    Attributes:
        keep_history: keep this turn in the KV cache for the next run.
        role: ``"user"`` or ``"tool"`` for text prompts.
        thinking: ask a thinking model to think (``<think>...</think>``).
    """

    keep_history: bool
    role: str
    thinking: bool
