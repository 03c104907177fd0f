"""The built libraries: exported symbols, embedded version string, fake-only extras."""

from __future__ import annotations

import subprocess

from rkllm_sdk._fake import library_path

from .driver import Driver

PUBLIC = {
    "rkllm_createDefaultParam",
    "rkllm_init",
    "rkllm_load_lora",
    "rkllm_load_prompt_cache",
    "rkllm_release_prompt_cache",
    "rkllm_destroy",
    "rkllm_run",
    "rkllm_run_async",
    "rkllm_abort",
    "rkllm_is_running",
    "rkllm_clear_kv_cache",
    "rkllm_get_kv_cache_size",
    "rkllm_set_chat_template",
    "rkllm_set_function_tools",
    "rkllm_set_cross_attn_params",
}
FAKE_ONLY = {
    "rkllm_fake_stats",
    "rkllm_fake_version",
    "rkllm_fake_last_input",
    "rkllm_fake_kv_text",
}
VERSIONS = {"1.2": "1.2.3", "1.3": "1.3.0"}


def test_exports_exactly_the_public_api_and_prefixed_extras(abi: str) -> None:
    """nm -D lists the 15 public functions and only rkllm_fake_* besides them."""
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(library_path(abi))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.split()[1] in "TtWw"}
    names -= {"_init", "_fini"}
    assert names == PUBLIC | FAKE_ONLY


def test_library_embeds_the_vendor_version_line(abi: str) -> None:
    """The file holds "rkllm-runtime version: X.Y.Z" so the SDK can detect the ABI."""
    data = library_path(abi).read_bytes()
    assert f"rkllm-runtime version: {VERSIONS[abi]}".encode() in data
    other = VERSIONS["1.3" if abi == "1.2" else "1.2"]
    assert f"rkllm-runtime version: {other}".encode() not in data


def test_fake_version_names_the_emulated_release(drv: Driver) -> None:
    """rkllm_fake_version() returns the emulated runtime release."""
    assert drv.ffi.string(drv.lib.rkllm_fake_version()).decode() == VERSIONS[drv.abi]
