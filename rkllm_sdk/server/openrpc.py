"""The proxy's OpenRPC document, as ``rpc.discover`` answers it, for publishing.

``python -m rkllm_sdk.server.openrpc > docs/openrpc.json`` writes the copy the docs site
publishes; a test checks that copy is current.
"""

from __future__ import annotations

import json
from typing import Any

from . import configure, functions, service  # noqa: F401  # importing them registers the methods
from .registry import REGISTRY

__all__ = ["PUBLISHED_VERSION", "document"]

#: The version in the published copy: the document describes the methods, which change
#: with the code, not with each development build's version string.
PUBLISHED_VERSION = "unreleased"


def document() -> dict[str, Any]:
    """The OpenRPC document of every method, as published with the docs."""
    return REGISTRY.openrpc(PUBLISHED_VERSION)


if __name__ == "__main__":
    print(json.dumps(document(), indent=2, ensure_ascii=False))
