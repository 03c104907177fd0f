"""What every command shares: exit codes, usage errors, and the runtime and model to run on.

The one module of the command that imports the SDK's internals (the runtime locator and the
bundled fake's demo model); everything else comes from the package root.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import attrs

from .. import AsyncLLM, ModelLoadError, ModelParams, RuntimeNotFoundError
from .._doctor import looks_like_library
from .._fake import demo_model_path
from .._ffi.loader import locate_runtime

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A command line that cannot work (exit code 2)."""


@attrs.frozen
class Target:
    """What a command runs on: the ``runtime=`` value, the model, and a notice to print."""

    runtime: str | None
    model: Path
    notice: str | None = None


def resolve_target(runtime: str | None, model: str | None, abi: str | None) -> Target:
    """Pick the runtime and model from the options, falling back to the bundled fake.

    No ``--model`` and no runtime installed: the fake runtime and its demo model. No
    ``--model`` with the fake runtime: its demo model. No ``--model`` with a real runtime:
    :class:`UsageError`.
    """
    if (
        runtime not in (None, "fake")
        and Path(runtime).is_file()
        and not looks_like_library(runtime)
    ):
        raise RuntimeNotFoundError(
            f"{runtime} is not a shared library (no ELF header): point --runtime at "
            "librkllmrt.so (or use 'fake')"
        )
    if model is not None:
        return Target(runtime, Path(model))
    try:
        path, _, is_fake = locate_runtime(runtime, abi=abi)
    except RuntimeNotFoundError:
        if runtime is not None:
            raise
        return Target(
            "fake",
            demo_model_path(),
            "no RKLLM runtime found: using the bundled fake runtime and its demo model "
            "(no NPU involved; pass --runtime and --model for a real one)",
        )
    if is_fake:
        return Target(runtime, demo_model_path(), "fake runtime: using its demo model")
    raise UsageError(f"a runtime was found ({path}); give the model to run with --model PATH")


async def load_model(args: argparse.Namespace, target: Target, **params: Any) -> AsyncLLM:
    """Load the target's model with ``params`` (and ``--max-new-tokens``, when given)."""
    model = target.model
    if model.is_dir():
        raise ModelLoadError(f"model file {str(model)!r} is a directory: give the file inside it")
    if not model.exists():  # the runtime's failure would list unrelated causes
        raise ModelLoadError(f"model file {str(model)!r} does not exist")
    if args.max_new_tokens is not None:
        params.setdefault("max_new_tokens", args.max_new_tokens)
    return await AsyncLLM.load(
        target.model, runtime=target.runtime, abi=args.abi, params=ModelParams(**params)
    )
