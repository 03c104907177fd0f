"""The native boundary: C declarations of librkllmrt for each runtime ABI.

This package is the only place that touches cffi (see docs/design in the team notes).
For now it holds the declaration files and composes them per ABI; the cffi objects,
library discovery and version detection land with the native layer.
"""

from __future__ import annotations

from importlib import resources

#: The runtime ABIs this SDK speaks: 1.2 (runtime 1.2.1-1.2.3) and 1.3 (runtime 1.3.0).
ABIS: tuple[str, ...] = ("1.2", "1.3")


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("cdef", name).read_text(encoding="utf-8")


def cdef_source(abi: str, *, fake: bool = False) -> str:
    """Return the cffi ``cdef`` text of the runtime API for ``abi``.

    Args:
        abi: ``"1.2"`` or ``"1.3"``.
        fake: also declare the ``rkllm_fake_*`` symbols only the bundled fake exports.

    Raises:
        ValueError: ``abi`` is not one of :data:`ABIS`.
    """
    if abi not in ABIS:
        raise ValueError(f"unsupported runtime ABI {abi!r}; supported: {', '.join(ABIS)}")
    parts = ["base.cdef", f"abi-{abi}.cdef", "api.cdef"]
    if fake:
        parts.append("fake.cdef")
    return "\n".join(_read(p) for p in parts)
