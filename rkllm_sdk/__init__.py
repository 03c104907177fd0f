"""rkllm-sdk: an async Python SDK for Rockchip's RKLLM NPU runtime (librkllmrt).

Importing the package loads no native library and reads no files of its own; the runtime
is found and loaded when a model is (see :func:`doctor` for what would be found).

``AsyncLLM`` is the async client (streams of ``Chunk``s, ``Generation`` results); the typed
models of the runtime's structs, the errors and ``doctor()`` are here too.
"""

from ._doctor import DoctorReport as DoctorReport
from ._doctor import ModelFileCheck as ModelFileCheck
from ._doctor import Problem as Problem
from ._doctor import doctor as doctor
from ._handle import HandleInfo as HandleInfo
from ._handle import open_handles as open_handles
from .chat import ChatReply as ChatReply
from .chat import ChatSession as ChatSession
from .errors import AbortedError as AbortedError
from .errors import ArrayTypeError as ArrayTypeError
from .errors import BusyError as BusyError
from .errors import ClosedError as ClosedError
from .errors import EventLoopError as EventLoopError
from .errors import GenerationError as GenerationError
from .errors import InvalidParamsError as InvalidParamsError
from .errors import ModelLoadError as ModelLoadError
from .errors import NativeCallError as NativeCallError
from .errors import RKLLMError as RKLLMError
from .errors import RuntimeNotFoundError as RuntimeNotFoundError
from .errors import RuntimeVersionError as RuntimeVersionError
from .errors import UnsupportedOnABIError as UnsupportedOnABIError
from .errors import http_status as http_status
from .errors import jsonrpc_code as jsonrpc_code
from .llm import AsyncLLM as AsyncLLM
from .metrics import MetricsSnapshot as MetricsSnapshot
from .models import CrossAttention as CrossAttention
from .models import EmbedInput as EmbedInput
from .models import ExtendParams as ExtendParams
from .models import ImageInput as ImageInput
from .models import Input as Input
from .models import LoraAdapter as LoraAdapter
from .models import ModelParams as ModelParams
from .models import MultimodalInput as MultimodalInput
from .models import Prompt as Prompt
from .models import PromptLike as PromptLike
from .models import Sampling as Sampling
from .models import TokenInput as TokenInput
from .models import VideoInput as VideoInput
from .options import RunOptions as RunOptions
from .options import TurnOptions as TurnOptions
from .results import Chunk as Chunk
from .results import FinishReason as FinishReason
from .results import Generation as Generation
from .results import PerfStats as PerfStats
from .results import RuntimeInfo as RuntimeInfo
from .results import ToolCall as ToolCall
from .stream import TokenStream as TokenStream
from .sync import LLM as LLM
from .sync import SyncChatSession as SyncChatSession
from .sync import SyncTokenStream as SyncTokenStream
from .tools import parse_tool_calls as parse_tool_calls
from .tools import split_thinking as split_thinking
from .tools import tool_schema as tool_schema


def __getattr__(name: str) -> str:
    # __version__ is looked up on first use: reading distribution metadata at import time
    # would be file I/O that `import rkllm_sdk` promises not to do.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            value = version("rkllm-sdk")
        except PackageNotFoundError:  # a source tree that was never installed
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module 'rkllm_sdk' has no attribute {name!r}")


__all__ = [
    "LLM",
    "AbortedError",
    "ArrayTypeError",
    "AsyncLLM",
    "BusyError",
    "ChatReply",
    "ChatSession",
    "Chunk",
    "ClosedError",
    "CrossAttention",
    "DoctorReport",
    "EmbedInput",
    "EventLoopError",
    "ExtendParams",
    "FinishReason",
    "Generation",
    "GenerationError",
    "HandleInfo",
    "ImageInput",
    "Input",
    "InvalidParamsError",
    "LoraAdapter",
    "MetricsSnapshot",
    "ModelFileCheck",
    "ModelLoadError",
    "ModelParams",
    "MultimodalInput",
    "NativeCallError",
    "PerfStats",
    "Problem",
    "Prompt",
    "PromptLike",
    "RKLLMError",
    "RunOptions",
    "RuntimeInfo",
    "RuntimeNotFoundError",
    "RuntimeVersionError",
    "Sampling",
    "SyncChatSession",
    "SyncTokenStream",
    "TokenInput",
    "TokenStream",
    "ToolCall",
    "TurnOptions",
    "UnsupportedOnABIError",
    "VideoInput",
    "__version__",
    "doctor",
    "http_status",
    "jsonrpc_code",
    "open_handles",
    "parse_tool_calls",
    "split_thinking",
    "tool_schema",
]
