"""The exceptions rkllm-sdk raises, and the one table mapping them to wire codes.

Every error the SDK raises derives from :class:`RKLLMError`, named by what happened::

    RKLLMError                      .code: the native return code, when there is one
    ├── RuntimeNotFoundError        no librkllmrt.so where we looked
    ├── RuntimeVersionError         runtime too old, unknown, or not the ABI asked for
    ├── ModelLoadError              rkllm_init failed (model file, driver, memory)
    ├── InvalidParamsError          bad argument (also a ValueError)
    │   ├── ArrayTypeError          an array dtype that cannot convert losslessly (a TypeError)
    │   └── UnsupportedOnABIError   a field that exists only in the other runtime ABI
    ├── BusyError                   the handle is running and the caller would not wait
    ├── GenerationError             a run failed (rkllm_run != 0 or RKLLM_RUN_ERROR)
    ├── AbortedError                the run was aborted before it produced its result
    ├── ClosedError                 the handle was closed
    ├── EventLoopError              the handle was used from an event loop not its own
    └── NativeCallError             any other runtime call returned non-zero

Cancellation (``asyncio.CancelledError``, trio's ``Cancelled``) is never wrapped.

:func:`jsonrpc_code` and :func:`http_status` give each error's code for the JSON-RPC / MCP
server and the HTTP API. Domain errors use -32003..-32019, inside JSON-RPC's server-error
range but clear of the codes the MCP SDK uses itself (-32000, -32001) and the one MCP retired
(-32002), so the same codes serve the JSON-RPC proxy and MCP; invalid arguments use
JSON-RPC's own -32602:

=========================  ========  =====
error                      JSON-RPC  HTTP
=========================  ========  =====
RKLLMError                 -32010    500
RuntimeNotFoundError       -32011    503
RuntimeVersionError        -32012    503
ModelLoadError             -32003    500
BusyError                  -32004    429
GenerationError            -32005    500
AbortedError               -32006    499
ClosedError                -32007    410
NativeCallError            -32008    500
EventLoopError             -32009    500
InvalidParamsError         -32602    400
ArrayTypeError             -32602    400
UnsupportedOnABIError      -32602    400
=========================  ========  =====
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .results import Generation

__all__ = [
    "ERROR_CODES",
    "AbortedError",
    "ArrayTypeError",
    "BusyError",
    "ClosedError",
    "ErrorCodes",
    "EventLoopError",
    "GenerationError",
    "InvalidParamsError",
    "ModelLoadError",
    "NativeCallError",
    "RKLLMError",
    "RuntimeNotFoundError",
    "RuntimeVersionError",
    "UnsupportedOnABIError",
    "http_status",
    "jsonrpc_code",
]


class RKLLMError(Exception):
    """Base of every rkllm-sdk error.

    Attributes:
        code: the native return code that caused it, or None.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class RuntimeNotFoundError(RKLLMError):
    """No runtime library was found; the message lists where the SDK looked."""


class RuntimeVersionError(RKLLMError):
    """The runtime's version is unsupported, undetectable, or disagrees with ``abi=``."""


class ModelLoadError(RKLLMError):
    """``rkllm_init`` failed: bad model file, runtime / driver mismatch, or no memory."""


class InvalidParamsError(RKLLMError, ValueError):
    """An argument is invalid; raised before anything reaches the runtime."""


class ArrayTypeError(InvalidParamsError, TypeError):
    """An array's dtype cannot be converted to what the runtime takes without loss."""


class UnsupportedOnABIError(InvalidParamsError):
    """A field or feature exists only in the other runtime ABI (never silently dropped)."""


class BusyError(RKLLMError):
    """The handle is running a generation and the caller asked not to wait."""


class GenerationError(RKLLMError):
    """A run failed: ``rkllm_run`` returned non-zero or the runtime reported an error.

    Attributes:
        generation: what the run produced before it failed (a ``Generation``), when known.
    """

    def __init__(
        self, message: str, *, code: int | None = None, generation: Generation | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.generation = generation


class AbortedError(RKLLMError):
    """The run was aborted before it produced the requested result."""


class ClosedError(RKLLMError):
    """The handle was closed (or is closing)."""


class EventLoopError(RKLLMError, RuntimeError):
    """A handle was used from an event loop other than the one it was loaded on (another
    thread's loop, or trio after asyncio): its queue and wake-ups belong to that loop."""


class NativeCallError(RKLLMError):
    """A runtime function returned a failure code; the message names the function."""


class ErrorCodes(NamedTuple):
    """Wire codes of one error class."""

    jsonrpc: int
    http: int


#: The single table from error class to its JSON-RPC code and HTTP status.
ERROR_CODES: Final[dict[type[RKLLMError], ErrorCodes]] = {
    RKLLMError: ErrorCodes(-32010, 500),
    RuntimeNotFoundError: ErrorCodes(-32011, 503),
    RuntimeVersionError: ErrorCodes(-32012, 503),
    ModelLoadError: ErrorCodes(-32003, 500),
    BusyError: ErrorCodes(-32004, 429),
    GenerationError: ErrorCodes(-32005, 500),
    AbortedError: ErrorCodes(-32006, 499),
    ClosedError: ErrorCodes(-32007, 410),
    NativeCallError: ErrorCodes(-32008, 500),
    EventLoopError: ErrorCodes(-32009, 500),
    InvalidParamsError: ErrorCodes(-32602, 400),
    ArrayTypeError: ErrorCodes(-32602, 400),
    UnsupportedOnABIError: ErrorCodes(-32602, 400),
}


def _codes(error: BaseException) -> ErrorCodes:
    for cls in type(error).__mro__:
        if cls in ERROR_CODES:
            return ERROR_CODES[cls]
    return ErrorCodes(-32603, 500)  # JSON-RPC "internal error" for anything foreign


def jsonrpc_code(error: BaseException) -> int:
    """The JSON-RPC error code for ``error`` (-32603 for non-SDK exceptions).

    >>> jsonrpc_code(BusyError("handle is busy"))
    -32004
    """
    return _codes(error).jsonrpc


def http_status(error: BaseException) -> int:
    """The HTTP status for ``error`` (500 for non-SDK exceptions).

    >>> http_status(InvalidParamsError("top_p must be in (0, 1]"))
    400
    """
    return _codes(error).http
