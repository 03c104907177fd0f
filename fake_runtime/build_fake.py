"""Compile the fake librkllmrt for one ABI.

The single place that knows the fake runtime's sources and compiler flags. Used by
``setup.py`` (the package build ships ``rkllm_sdk/_fake/librkllmrt-fake-<abi>.so``) and by
CI's sanitizer job, which builds an ASan/UBSan copy elsewhere::

    python fake_runtime/build_fake.py --out-dir build/asan --sanitize
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ABIS = ("1.2", "1.3")
SOURCES = sorted((HERE / "src").glob("*.c"))
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes"]
CFLAGS = ["-std=c11", "-O2", "-g", "-fPIC", "-pthread", "-fvisibility=hidden", *WARNINGS]
SANITIZE = [
    "-O1",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",
    "-fno-omit-frame-pointer",
]


BRIDGE_DIR = HERE.parent / "bridge"
BRIDGE_NAME = "librkllm-bridge.so"


def build_bridge(out: Path, *, sanitize: bool = False) -> Path:
    """Compile the SDK's C bridge (bridge/bridge.c). Runtime ABIs 1.2 and 1.3 share the
    result struct and callback signature it uses, so one build serves both."""
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = [*CFLAGS, *(SANITIZE if sanitize else [])]
    cmd = [
        *compiler(),
        *flags,
        "-DRKLLM_ABI=13",
        f"-I{HERE / 'include'}",
        f"-I{BRIDGE_DIR}",
        str(BRIDGE_DIR / "bridge.c"),
        "-shared",
        "-Wl,-z,defs",
        "-o",
        str(out),
    ]
    subprocess.run(cmd, check=True)
    return out


def library_name(abi: str) -> str:
    """File name of the fake runtime for ``abi`` ("1.2" or "1.3")."""
    return f"librkllmrt-fake-{abi}.so"


def compiler() -> list[str]:
    """The C compiler: $CC if set (may carry flags), else cc."""
    return shlex.split(os.environ.get("CC", "cc"))


def build(abi: str, out: Path, *, sanitize: bool = False, extra: list[str] | None = None) -> Path:
    """Compile and link the fake for ``abi`` into ``out``; raises CalledProcessError on failure."""
    if abi not in ABIS:
        raise ValueError(f"abi must be one of {ABIS}, not {abi!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = [*CFLAGS, *(SANITIZE if sanitize else []), *(extra or [])]
    cmd = [
        *compiler(),
        *flags,
        f"-DRKLLM_ABI={abi.replace('.', '')}",
        f"-I{HERE / 'include'}",
        *map(str, SOURCES),
        "-shared",
        "-Wl,-z,defs",
        "-o",
        str(out),
        "-lm",
    ]
    subprocess.run(cmd, check=True)
    return out


def _executable(abi: str, inputs: list[Path], out: Path, flags: list[str]) -> Path:
    """Compile and link the C ``inputs`` (sources, or a built fake) into the executable ``out``."""
    if abi not in ABIS:
        raise ValueError(f"abi must be one of {ABIS}, not {abi!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        *compiler(),
        "-std=c11",
        "-O1",
        "-g",
        "-pthread",
        *WARNINGS,
        *flags,
        f"-DRKLLM_ABI={abi.replace('.', '')}",
        f"-I{HERE / 'include'}",
        f"-I{BRIDGE_DIR}",
        *map(str, inputs),
        "-o",
        str(out),
        "-lm",
    ]
    subprocess.run(cmd, check=True)
    return out


def _sanitized_executable(abi: str, sources: list[Path], out: Path, sanitizer: str) -> Path:
    flags = [
        f"-fsanitize={sanitizer}",
        *(["-fno-sanitize-recover=undefined"] if "undefined" in sanitizer else []),
        "-fno-omit-frame-pointer",
    ]
    return _executable(abi, sources, out, flags)


def build_stress(abi: str, out: Path, sanitizer: str) -> Path:
    """Compile tests/stress.c with the fake's sources under ``-fsanitize=<sanitizer>``.

    The result is a plain executable (``stress MODEL_JSON``) for ThreadSanitizer and
    LeakSanitizer runs, which a Python host process cannot give.
    """
    return _sanitized_executable(abi, [*SOURCES, HERE / "tests" / "stress.c"], out, sanitizer)


def build_test_program(
    abi: str,
    source: Path,
    out: Path,
    *,
    library: Path | None = None,
    sanitizer: str | None = None,
) -> Path:
    """Compile a C test program (``fake_runtime/tests/*.c``) against the fake for ``abi``.

    With ``library``, the program links that built fake (the sanitizer job passes its
    ASan/UBSan build); with ``sanitizer``, it is compiled together with the fake's sources
    under ``-fsanitize=<sanitizer>`` (as :func:`build_stress`).
    """
    if (library is None) == (sanitizer is None):
        raise ValueError("give exactly one of library and sanitizer")
    if sanitizer is not None:
        return _sanitized_executable(abi, [*SOURCES, source], out, sanitizer)
    assert library is not None
    return _executable(abi, [source, library], out, [])


def build_bridge_stress(out: Path, sanitizer: str) -> Path:
    """Compile bridge/tests/bridge_stress.c with the bridge under ``-fsanitize=<sanitizer>``."""
    sources = [BRIDGE_DIR / "bridge.c", BRIDGE_DIR / "tests" / "bridge_stress.c"]
    return _sanitized_executable("1.3", sources, out, sanitizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--sanitize", action="store_true", help="build with ASan and UBSan")
    parser.add_argument("--abi", choices=ABIS, action="append", help="default: both")
    args = parser.parse_args(argv)
    for abi in args.abi or ABIS:
        path = build(abi, args.out_dir / library_name(abi), sanitize=args.sanitize)
        print(path)
    print(build_bridge(args.out_dir / BRIDGE_NAME, sanitize=args.sanitize))
    return 0


if __name__ == "__main__":
    sys.exit(main())
