"""What every scenario shares: the prompts, the token limits and the groups of callback states."""

from __future__ import annotations

from ..models import CallState

#: Asks for a reply with CJK characters and an emoji: their bytes are split across tokens,
#: which is what makes a runtime send WAITING callbacks. (The fake's demo model answers
#: prompts containing "Hello" with a reply ending in "你好 🙂".)
PROBE_PROMPT = (
    "Hello! Please greet me in Chinese characters, like 你好, and end with an emoji such as 🙂."
)
#: A prompt with a short answer (KV cache, pause and resume).
SHORT_PROMPT = "Reply with one word: OK."
#: A prompt with a long answer (abort latency, destroy while running).
LONG_PROMPT = "Count from 1 to 100, one number per line."

#: Init limit on generated tokens (runtime 1.2 has no per-run limit).
MAX_NEW_TOKENS = 96
#: Per-run limit of the short runs on runtime 1.3.
SHORT_NEW_TOKENS = 8

TERMINAL = (CallState.FINISH, CallState.ERROR)
TOKEN_STATES = (CallState.NORMAL, CallState.WAITING)
