"""The OpenRPC document published with the docs is the one the server answers."""

from __future__ import annotations

import json
from pathlib import Path

from rkllm_sdk.server.openrpc import PUBLISHED_VERSION, document
from rkllm_sdk.server.registry import REGISTRY

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "openrpc.json"


def test_published_openrpc_document_is_current() -> None:
    """docs/openrpc.json equals the registry's document (regenerate it with
    `python -m rkllm_sdk.server.openrpc > docs/openrpc.json` when a method changes)."""
    published = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    assert published == json.loads(json.dumps(document()))
    assert {m["name"] for m in published["methods"]} == set(REGISTRY.methods)
    assert published["info"]["version"] == PUBLISHED_VERSION
