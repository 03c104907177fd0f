"""Stream a reply from the bundled fake runtime, straight through its C API.

The README's main job until the ``rkllm`` command exists: it loads the fake librkllmrt
that the package build compiled, initialises the demo model and prints tokens as the
runtime thread delivers them, then the runtime's own perf numbers.

    python examples/stream_fake.py "Hello, who are you?" [--abi 1.2|1.3]
"""

from __future__ import annotations

import argparse
import codecs
import sys
from typing import Any

import cffi

from rkllm_sdk._fake import demo_model_path, library_path
from rkllm_sdk._ffi import cdef_source

FINISH, ERROR = 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stream a reply from the bundled fake runtime.")
    parser.add_argument("prompt", nargs="?", default="Hello")
    parser.add_argument("--abi", choices=["1.2", "1.3"], default="1.3")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)

    ffi = cffi.FFI()
    ffi.cdef(cdef_source(args.abi))
    lib: Any = ffi.dlopen(str(library_path(args.abi)))  # cffi cdata is untyped
    print(
        f"[fake runtime {args.abi} from {library_path(args.abi)}; no board needed]", file=sys.stderr
    )

    decoder = codecs.getincrementaldecoder("utf-8")()
    perf: dict[str, float] = {}

    @ffi.callback("LLMResultCallback")
    def on_result(result: Any, _userdata: Any, state: int) -> int:
        if state in (FINISH, ERROR):
            p = result.perf
            perf.update(
                prefill_ms=p.prefill_time_ms,
                prefill_tokens=p.prefill_tokens,
                generate_ms=p.generate_time_ms,
                generate_tokens=p.generate_tokens,
                memory_mb=p.memory_usage_mb,
                error=float(state == ERROR),
            )
        elif result.text != ffi.NULL:
            # WAITING callbacks end inside a UTF-8 character: the decoder holds those bytes.
            raw = ffi.string(result.text)
            assert isinstance(raw, bytes)  # char* gives bytes
            sys.stdout.write(decoder.decode(raw))
            sys.stdout.flush()
        return 0

    model_path = ffi.new("char[]", str(demo_model_path()).encode())
    param: Any = ffi.new("RKLLMParam*", lib.rkllm_createDefaultParam())
    param.model_path = model_path
    param.max_new_tokens = args.max_new_tokens
    handle: Any = ffi.new("LLMHandle*")
    if args.abi == "1.2":
        rc = lib.rkllm_init(handle, param, on_result)
    else:
        rc = lib.rkllm_init(
            handle, param, ffi.new("RKLLMCallback*", {"result_callback": on_result})
        )
    if rc != 0:
        print(f"rkllm_init failed with {rc}", file=sys.stderr)
        return 1
    try:
        inp: Any = ffi.new("RKLLMInput*")
        prompt = ffi.new("char[]", args.prompt.encode())
        role = ffi.new("char[]", b"user")
        inp.role = role
        inp.input_type = 0
        inp.prompt_input = prompt
        infer: Any = ffi.new("RKLLMInferParam*")
        rc = lib.rkllm_run(handle[0], inp, infer, ffi.NULL)
    finally:
        lib.rkllm_destroy(handle[0])
    print()
    if rc != 0 or perf.get("error"):
        print(f"generation failed (rkllm_run returned {rc})", file=sys.stderr)
        return 1
    decode_rate = perf["generate_tokens"] / max(perf["generate_ms"], 1e-9) * 1000
    print(
        f"[prefill {perf['prefill_tokens']} tokens in {perf['prefill_ms']:.1f} ms, "
        f"decode {perf['generate_tokens']} tokens at {decode_rate:.1f} tok/s, "
        f"peak memory {perf['memory_mb']:.1f} MB]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
