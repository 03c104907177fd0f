"""The ``rkllm`` command: ``doctor``, ``run``, ``chat``, ``bench`` and ``serve``.

Also reachable as ``python -m rkllm_sdk``. Output goes through ``rich``: colour in a
terminal, plain text when piped. Generated text goes to stdout; notices, summaries,
progress and errors go to stderr, so ``rkllm run "..." > reply.txt`` keeps only the reply.

Exit codes: 0 success; 1 an SDK error (or ``doctor`` found a problem); 2 bad usage;
130 a generation interrupted with Ctrl-C (``run`` and ``bench``).

Unlike the library, the command falls back to the bundled fake runtime when no runtime is
installed and no model is given, and says so in one line.

Where the code lives: one module per command (``doctor``, ``run``, ``chat``, ``bench``,
``serve``);
``_parser`` builds the argument parser; ``_common`` holds the exit codes, ``UsageError`` and
the choice of runtime and model (and is the only module importing the SDK's internals);
``_interrupts`` is the Ctrl-C handling; ``_output`` the consoles, JSON and summary lines.
rich is imported only when a command runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import RKLLMError
from ._common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from ._output import consoles, esc
from ._parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rkllm`` command; returns the exit code.

    >>> main(["doctor", "--runtime", "fake", "--json"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"rkllm {args.command}: error: {exc}\n")
    except RKLLMError as exc:
        _, err = consoles()
        err.print(f"[red bold]error:[/red bold] {esc(f'{type(exc).__name__}: {exc}')}")
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C before the command's own handling was in place
        return EXIT_INTERRUPTED
    return code
