"""Measure the fake runtime's token path against its baselines, in one run.

Figures (the fake at decode_ms = 0, both ABIs):
- ``ceiling_c_tokens_per_s``: the fake driven by a compiled no-op C callback
  (benchmarks/ceiling.c): the most any binding can deliver.
- ``pycallback_tokens_per_s``: the same run through a cffi Python callback that copies
  each token's text into a list, the design peers use.
- ``pycallback_ratio``: the second over the first.

    python -m benchmarks            # table
    python -m benchmarks --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cffi

from rkllm_sdk._fake import library_path
from rkllm_sdk._ffi import ABIS, cdef_source

ROOT = Path(__file__).resolve().parents[1]
MODEL = {
    "format": "rkllm-fake/1",
    "name": "bench",
    "vocab_size": 151936,
    "hidden_size": 64,
    "decode_ms": 0,
    "prefill_ms": 0,
    "natural_end": False,
}


def build_ceiling(abi: str, out: Path) -> Path:
    exe = out / f"ceiling-{abi}"
    lib = library_path(abi)
    subprocess.run(
        [
            "cc",
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-DRKLLM_ABI={abi.replace('.', '')}",
            f"-I{ROOT / 'fake_runtime' / 'include'}",
            str(ROOT / "benchmarks" / "ceiling.c"),
            str(lib),
            f"-Wl,-rpath,{lib.parent}",
            "-o",
            str(exe),
        ],
        check=True,
    )
    return exe


def ceiling_rate(exe: Path, model: Path, tokens: int) -> float:
    out = subprocess.run(
        [str(exe), str(model), str(tokens)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "RKLLM_FAKE_QUIET": "1"},
    ).stdout
    result = json.loads(out)
    assert result["tokens"] == tokens, result
    return float(result["tokens"] / result["seconds"])


def pycallback_rate(abi: str, model: Path, tokens: int) -> float:
    ffi = cffi.FFI()
    ffi.cdef(cdef_source(abi))
    lib: Any = ffi.dlopen(str(library_path(abi)))  # cffi cdata is untyped
    chunks: list[bytes | str] = []

    @ffi.callback("LLMResultCallback")
    def on_result(result: Any, _ud: Any, state: int) -> int:
        if state in (0, 1):
            chunks.append(ffi.string(result.text))
        return 0

    keep = [
        ffi.new("char[]", str(model).encode()),
        ffi.new("char[]", b"user"),
        ffi.new("char[]", b"benchmark"),
    ]
    param: Any = ffi.new("RKLLMParam*", lib.rkllm_createDefaultParam())
    param.model_path, param.max_new_tokens, param.max_context_len = keep[0], tokens, 4096
    handle: Any = ffi.new("LLMHandle*")
    cbs: Any = (
        on_result if abi == "1.2" else ffi.new("RKLLMCallback*", {"result_callback": on_result})
    )
    assert lib.rkllm_init(handle, param, cbs) == 0
    inp: Any = ffi.new("RKLLMInput*")
    inp.role, inp.input_type, inp.prompt_input = keep[1], 0, keep[2]
    infer: Any = ffi.new("RKLLMInferParam*")
    t0 = time.perf_counter()
    rc = lib.rkllm_run(handle[0], inp, infer, ffi.NULL)
    seconds = time.perf_counter() - t0
    lib.rkllm_destroy(handle[0])
    assert rc == 0 and len(chunks) == tokens, (rc, len(chunks))
    return tokens / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rkllm-sdk benchmarks")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="median of this many runs")
    args = parser.parse_args(argv)
    os.environ["RKLLM_FAKE_QUIET"] = "1"
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "tokens": args.tokens,
    }
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "bench.json"
        model.write_text(json.dumps(MODEL))
        for abi in ABIS:
            exe = build_ceiling(abi, Path(tmp))
            ceiling = statistics.median(
                ceiling_rate(exe, model, args.tokens) for _ in range(args.repeat)
            )
            py = statistics.median(
                pycallback_rate(abi, model, args.tokens) for _ in range(args.repeat)
            )
            results[abi] = {
                "ceiling_c_tokens_per_s": round(ceiling),
                "pycallback_tokens_per_s": round(py),
                "pycallback_ratio": round(py / ceiling, 3),
            }
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{args.tokens} tokens per run, median of {args.repeat} runs, decode_ms = 0")
        print(f"{'ABI':<5} {'ceiling C tok/s':>16} {'py callback tok/s':>18} {'ratio':>7}")
        for abi in ABIS:
            r = results[abi]
            print(
                f"{abi:<5} {r['ceiling_c_tokens_per_s']:>16,} {r['pycallback_tokens_per_s']:>18,} "
                f"{r['pycallback_ratio']:>7.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
