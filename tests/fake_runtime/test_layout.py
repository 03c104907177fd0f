"""Struct layouts: our C header, the sizes in rkllm-abi.md and the cffi declarations agree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rkllm_sdk._ffi import ffi_for

ROOT = Path(__file__).resolve().parents[2]

# Sizes stated in shared/docs/rkllm-abi.md (LP64), per ABI.
DOC_SIZES = {
    "1.2": {
        "RKLLMExtendParam": 120,
        "RKLLMParam": 208,
        "RKLLMMultiModalInput": 48,
        "RKLLMInput": 64,
        "RKLLMCrossAttnParam": 40,
        "RKLLMInferParam": 32,
        "RKLLMPerfStat": 20,
        "RKLLMResult": 72,
    },
    "1.3": {
        "RKLLMExtendParam": 120,
        "RKLLMParam": 184,
        "RKLLMMultiModalInput": 144,
        "RKLLMInput": 160,
        "RKLLMCrossAttnParam": 40,
        "RKLLMSamplingParam": 36,
        "RKLLMInferParam": 40,
        "RKLLMPerfStat": 20,
        "RKLLMResult": 72,
        "RKLLMCallback": 48,
    },
}
ALL_STRUCTS = {
    "RKLLMExtendParam",
    "RKLLMParam",
    "RKLLMLoraAdapter",
    "RKLLMEmbedInput",
    "RKLLMTokenInput",
    "RKLLMMultiModalInput",
    "RKLLMInput",
    "RKLLMLoraParam",
    "RKLLMPromptCacheParam",
    "RKLLMCrossAttnParam",
    "RKLLMInferParam",
    "RKLLMResultLastHiddenLayer",
    "RKLLMResultLogits",
    "RKLLMPerfStat",
    "RKLLMResult",
}
ONLY_13 = {"RKLLMSamplingParam", "RKLLMCallback"}


def probe(abi: str, tmp: Path) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    exe = tmp / f"probe-{abi}"
    subprocess.run(
        [
            "cc",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-DRKLLM_ABI={abi.replace('.', '')}",
            f"-I{ROOT / 'fake_runtime' / 'include'}",
            str(ROOT / "fake_runtime/probe/layout_probe.c"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    structs: dict[str, int] = {}
    fields: dict[str, tuple[int, int]] = {}
    for line in subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True
    ).stdout.splitlines():
        kind, name, *nums = line.split()
        if kind == "STRUCT":
            structs[name] = int(nums[0])
        else:
            fields[name] = (int(nums[0]), int(nums[1]))
    return structs, fields


@pytest.fixture(scope="module")
def probes(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[dict[str, int], dict[str, tuple[int, int]]]]:
    tmp = tmp_path_factory.mktemp("probe")
    return {abi: probe(abi, tmp) for abi in ("1.2", "1.3")}


def test_probe_covers_every_struct_of_the_abi(probes, abi: str) -> None:
    """The probe prints all 15 shared structs, plus the two 1.3-only ones on 1.3."""
    structs, _ = probes[abi]
    expected = ALL_STRUCTS | (ONLY_13 if abi == "1.3" else set())
    assert set(structs) == expected


def test_header_matches_documented_sizes(probes, abi: str) -> None:
    """sizeof of every struct the ABI doc sizes is exactly the documented value."""
    structs, _ = probes[abi]
    for name, size in DOC_SIZES[abi].items():
        assert structs[name] == size, name


def test_cffi_declarations_match_the_c_header(probes, abi: str) -> None:
    """The SDK's FFI (ffi_for) agrees with the compiler for every struct and field."""
    structs, fields = probes[abi]
    ffi = ffi_for(abi)
    for name, size in structs.items():
        assert ffi.sizeof(name) == size, name
    for dotted, (offset, size) in fields.items():
        struct, *path = dotted.split(".")
        assert ffi.offsetof(struct, *path) == offset, dotted
        ctype = ffi.typeof(struct)
        for part in path:
            ctype = dict(ctype.fields)[part].type
        assert ffi.sizeof(ctype) == size, dotted
