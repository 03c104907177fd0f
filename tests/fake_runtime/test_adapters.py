"""LoRA adapters, prompt caches and cross-attention inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .conftest import ModelFactory
from .driver import Driver, Handle, fnv1a


def load_lora(
    drv: Driver, h: Handle, path: str | None, name: str | None, scale: float = 1.0
) -> int:
    a = drv.ffi.new("RKLLMLoraAdapter*")
    keep = []
    if path is not None:
        keep.append(drv.ffi.new("char[]", path.encode()))
        a.lora_adapter_path = keep[-1]
    if name is not None:
        keep.append(drv.ffi.new("char[]", name.encode()))
        a.lora_adapter_name = keep[-1]
    a.scale = scale
    return int(drv.lib.rkllm_load_lora(h.ptr, a))


def test_lora_changes_the_output_deterministically(
    drv: Driver, model: ModelFactory, tmp_path: Path
) -> None:
    """A run naming a loaded adapter differs from the base model, the same each time."""
    adapter = tmp_path / "style.rkllm"
    adapter.write_bytes(b"lora")
    h = drv.init(model())
    base = h.run("write a line").text()
    assert load_lora(drv, h, str(adapter), "style", 0.5) == 0
    with_lora = h.run("write a line", lora="style").text()
    assert with_lora != base
    assert h.run("write a line", lora="style").text() == with_lora
    assert h.last_input()["lora"] == {"name": "style", "scale": 0.5}
    assert h.run("write a line").text() == base
    assert load_lora(drv, h, str(adapter), "style", 2.0) == 0  # reloading replaces the scale
    assert h.run("write a line", lora="style").text() != with_lora


def test_lora_errors(drv: Driver, model: ModelFactory, tmp_path: Path) -> None:
    """A missing file, missing name or unknown adapter at run time: -1."""
    h = drv.init(model())
    assert load_lora(drv, h, str(tmp_path / "missing"), "x") == -1
    assert load_lora(drv, h, None, "x") == -1
    (tmp_path / "a").write_bytes(b"")
    assert load_lora(drv, h, str(tmp_path / "a"), None) == -1
    assert load_lora(drv, h, str(tmp_path / "a"), "") == -1
    assert drv.lib.rkllm_load_lora(h.ptr, drv.ffi.NULL) == -1
    run = h.run("x", lora="nope")
    assert (run.rc, run.events) == (-1, [])


def test_prompt_cache_save_load_reuse_release(
    drv: Driver, model: ModelFactory, tmp_path: Path
) -> None:
    """Saving writes the prefill; loading it cuts the prefill to the uncommon suffix."""
    cache = tmp_path / "prefix.cache"
    h = drv.init(model())
    long_prefix = "You are a careful assistant. Here are the house rules in detail: " * 3
    full = h.run(long_prefix + "question one", save_cache=str(cache))
    assert cache.is_file()
    assert h.last_input()["prompt_cache_save"] == str(cache)
    total = full.terminal.items[0].perf["prefill_tokens"]
    path = drv.ffi.new("char[]", str(cache).encode())
    assert drv.lib.rkllm_load_prompt_cache(h.ptr, path) == 0
    reused = h.run(long_prefix + "question two")
    computed = reused.terminal.items[0].perf["prefill_tokens"]
    info = h.last_input()["inputs"][0]
    assert info["prefill_tokens"] >= total - 3
    assert 0 < computed < 15
    assert info["computed_prefill_tokens"] == computed
    assert drv.lib.rkllm_release_prompt_cache(h.ptr) == 0
    again = h.run(long_prefix + "question two")
    assert again.terminal.items[0].perf["prefill_tokens"] == info["prefill_tokens"]


def test_prompt_cache_errors(drv: Driver, model: ModelFactory, tmp_path: Path) -> None:
    """Missing or foreign cache files, NULL path, unwritable save path: refused or ERROR."""
    h = drv.init(model())
    bogus = tmp_path / "bogus.cache"
    bogus.write_bytes(b"not a cache file at all")
    for p in (tmp_path / "missing", bogus):
        assert drv.lib.rkllm_load_prompt_cache(h.ptr, drv.ffi.new("char[]", str(p).encode())) == -1
    assert drv.lib.rkllm_load_prompt_cache(h.ptr, drv.ffi.NULL) == -1
    run = h.run("x", save_cache=str(tmp_path / "no-such-dir" / "c.cache"))
    assert run.rc == -1
    assert run.terminal.state == 3
    keep: list[object] = []
    infer = h.infer(keep, save_cache="x")
    infer.prompt_cache_params.prompt_cache_path = drv.ffi.NULL
    assert h.run_input(h.prompt("x", keep), infer) == -1


def cross_params(
    drv: Driver, keep: list[object], layers: int, heads: int, dim: int, n: int, *, seed: int = 0
) -> tuple[object, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((layers, n, heads, dim)).astype(np.float32)
    v = rng.standard_normal((layers, heads, dim, n)).astype(np.float32)
    mask = np.zeros(n, np.float32)
    pos = np.arange(n, dtype=np.int32)
    p = drv.ffi.new("RKLLMCrossAttnParam*")
    p.encoder_k_cache = drv.ffi.cast("float*", drv.ffi.from_buffer(k))
    p.encoder_v_cache = drv.ffi.cast("float*", drv.ffi.from_buffer(v))
    p.encoder_mask = drv.ffi.cast("float*", drv.ffi.from_buffer(mask))
    p.encoder_pos = drv.ffi.cast("int32_t*", drv.ffi.from_buffer(pos))
    p.num_tokens = n
    keep += [k, v, mask, pos, p]
    return p, [k, v, mask, pos]


def test_cross_attention_arrays_are_read_at_run_time(drv: Driver, model: ModelFactory) -> None:
    """All four arrays are read (model geometry x num_tokens) and feed the output."""
    h = drv.init(model(num_layers=2, num_kv_heads=2, head_dim=8), extend={"use_cross_attn": 1})
    keep: list[object] = []
    plain = h.run("x").text()
    p, arrays = cross_params(drv, keep, 2, 2, 8, 5)
    assert drv.lib.rkllm_set_cross_attn_params(h.ptr, p) == 0
    text = h.run("x").text()
    assert text.startswith(f"[cross n=5 fnv={fnv1a(*arrays)}] ")
    arrays[2][:] = 1.0  # the runtime reads the arrays at each run, not at set time
    assert fnv1a(*arrays) in h.run("x").text()
    clear = drv.ffi.new("RKLLMCrossAttnParam*")
    assert drv.lib.rkllm_set_cross_attn_params(h.ptr, clear) == 0
    assert h.run("x").text() == plain


def test_cross_attention_errors(drv: Driver, model: ModelFactory) -> None:
    """Not enabled at init, NULL params, missing arrays or num_tokens <= 0: -1."""
    keep: list[object] = []
    off = drv.init(model(num_layers=1, num_kv_heads=1, head_dim=4))
    p, _ = cross_params(drv, keep, 1, 1, 4, 3)
    assert drv.lib.rkllm_set_cross_attn_params(off.ptr, p) == -1
    h = drv.init(model(num_layers=1, num_kv_heads=1, head_dim=4), extend={"use_cross_attn": 1})
    assert drv.lib.rkllm_set_cross_attn_params(h.ptr, drv.ffi.NULL) == -1
    p.num_tokens = -1
    assert drv.lib.rkllm_set_cross_attn_params(h.ptr, p) == -1
    p.num_tokens = 3
    p.encoder_mask = drv.ffi.NULL
    assert drv.lib.rkllm_set_cross_attn_params(h.ptr, p) == -1
