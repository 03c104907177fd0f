"""``rkllm serve``: the RKLLM runtime's functions as a JSON-RPC 2.0 proxy, and named models
behind MCP and the OpenAI and Ollama APIs.

Built on the SDK's public API only (never cffi). Nothing imports this package when
``rkllm_sdk`` is imported.

Modules, one idea each:

- ``schema``: JSON Schema builders and the validator reading them (paths of bad fields).
- ``wire``: arrays as nested lists or typed base64; results as JSON.
- ``params``: the C structs (``RKLLMParam``, ``RKLLMInput``, ...) as schemas, to models.
- ``registry``: one entry per method: schemas, handler, the OpenRPC document.
- ``functions``: the runtime's handle and run functions; ``configure``: its configuration
  functions (LoRA, caches, templates, tools, cross attention); ``service``: the proxy's own
  methods.
- ``jsonrpc``: JSON-RPC 2.0 and the dispatcher (:class:`Server`), no sockets.
- ``outbox``: a connection's bounded outgoing queue; a run's chunks that pile up while the
  writer is busy leave as one notification.
- ``connection``: one client, whatever carries it; cleanup when it leaves.
- ``sessions``: handle ownership, limits, path confinement (:class:`ServerConfig`).
- ``polling``: ``rkllm_run_async`` runs' bounded result buffers, read with a cursor; expiry.
- ``transports``: stdio, TCP and Unix sockets (newline-delimited JSON, anyio); standard
  input read by a daemon thread (``FdReader``, MCP's stdio too).
- ``http``: ``POST /rpc`` (buffered or Server-Sent Events), ``/ws``, ``/health``,
  ``/metrics`` (Starlette on uvicorn, imported only when ``--http`` is given).
- ``http_sessions``: handle ownership over HTTP (API key + ``X-RKLLM-Session``), idle expiry.

The named-model APIs on the same HTTP port (``--http``):

- ``templates`` (+ ``template_sources``): chat templates rendered on the server (Jinja).
- ``model_specs``: named models as configured (``--model`` options, ``--models-dir``).
- ``catalog``: the named models' handles: load on first use, bounded FIFO queues,
  keep-alive, least-recently-used swaps; ``catalog_metrics``: their counters, as
  Prometheus text.
- ``chat_engine``: the one place that runs a chat: render, reuse the KV cache, stream;
  ``chat_types``: its requests, reply pieces and request errors; ``kv_reuse``: what a
  model's KV cache holds, continuation, the prompt-cache directory, Home Assistant's time
  line; ``reply_parser``: a run's chunks as reasoning, content, tool calls, stops.
- ``openai_api`` (+ ``openai_wire``): ``/v1/...``; ``ollama_api`` (+ ``ollama_wire``):
  ``/api/...`` (Home Assistant's Ollama integration).
- ``mcp_server``: MCP (the official ``mcp`` package) at ``/mcp`` and on stdio;
  ``mcp_tools``: its tools (definitions, calls through the registry or the engine).
"""

from __future__ import annotations

from .connection import Connection as Connection
from .jsonrpc import Server as Server
from .sessions import ServerConfig as ServerConfig

__all__ = ["Connection", "Server", "ServerConfig"]
