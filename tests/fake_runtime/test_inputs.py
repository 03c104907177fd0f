"""Token, embedding and multimodal inputs: the runtime reads exactly what it was given."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import ModelFactory
from .driver import ERROR, Driver, fnv1a

HIDDEN = 16


def test_token_input_checksum_names_the_ids(drv: Driver, model: ModelFactory) -> None:
    """Token ids arrive intact and in order: the reply names their count and checksum."""
    h = drv.init(model())
    ids = np.array([5, 17, 4095, 0, 300], dtype=np.int32)
    keep: list[object] = []
    run = h.collect(h.tokens(ids, keep), h.infer(keep))
    assert run.rc == 0
    assert run.text().startswith(f"[tokens n=5 fnv={fnv1a(ids)}] ")
    info = h.last_input()["inputs"][0]
    assert (info["type"], info["prefill_tokens"], info["templated"]) == ("token", 5, "")
    reordered = h.collect(h.tokens(ids[::-1].copy(), keep), h.infer(keep))
    assert fnv1a(ids) not in reordered.text()


def test_token_ids_outside_the_vocabulary_fail_the_run(drv: Driver, model: ModelFactory) -> None:
    """An id >= vocab_size (or negative) ends the run with ERROR and rc -1."""
    h = drv.init(model(vocab_size=4096))
    keep: list[object] = []
    for bad in (4096, -1):
        run = h.collect(h.tokens(np.array([1, bad], dtype=np.int32), keep), h.infer(keep))
        assert run.rc == -1
        assert [e.state for e in run.events] == [ERROR]


def test_embedding_input_reads_n_tokens_rows(drv: Driver, model: ModelFactory) -> None:
    """Embeddings: exactly n_tokens x hidden_size floats are read and checksummed."""
    h = drv.init(model(hidden_size=HIDDEN))
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((6, HIDDEN)).astype(np.float32)
    keep: list[object] = []
    run = h.collect(h.embed(rows, keep), h.infer(keep))
    assert run.text().startswith(f"[embed n=6x{HIDDEN} fnv={fnv1a(rows)}] ")
    assert h.last_input()["inputs"][0]["prefill_tokens"] == 6


def test_empty_or_null_arrays_are_rejected_before_running(drv: Driver, model: ModelFactory) -> None:
    """n_tokens == 0 or a NULL pointer: -1 and no callback."""
    h = drv.init(model())
    keep: list[object] = []
    inp = h.tokens(np.array([1], dtype=np.int32), keep)
    inp.token_input.n_tokens = 0
    assert h.run_input(inp, h.infer(keep)) == -1
    inp = h.embed(np.zeros((1, HIDDEN), dtype=np.float32), keep)
    inp.embed_input.embed = drv.ffi.NULL
    assert h.run_input(inp, h.infer(keep)) == -1
    assert h.rec.events == []


def test_image_input_is_placed_and_checksummed(drv: Driver, model: ModelFactory) -> None:
    """Multimodal: <image> becomes start/end markers; n_image x n_image_tokens rows are read."""
    fields = {"img_start": "<img>", "img_end": "</img>"} if drv.abi == "1.2" else {}
    h = drv.init(model(hidden_size=HIDDEN), **fields)
    image = np.arange(2 * 3 * HIDDEN, dtype=np.float32).reshape(2, 3, HIDDEN)
    keep: list[object] = []
    inp = h.multimodal("look <image> here", keep, image=image)
    if drv.abi == "1.3":
        s, e = drv.ffi.new("char[]", b"<img>"), drv.ffi.new("char[]", b"</img>")
        keep += [s, e]
        inp.multimodal_input.image.image_start = s
        inp.multimodal_input.image.image_end = e
    run = h.collect(inp, h.infer(keep))
    assert run.rc == 0
    assert f"[image n=2x3x{HIDDEN} fnv={fnv1a(image)}] " in run.text()
    info = h.last_input()["inputs"][0]
    assert "user\nlook <img></img> here<|im_end|>" in info["templated"]
    text_tokens = info["prefill_tokens"] - 6
    assert text_tokens > 0


def test_image_without_placeholder_goes_first(drv: Driver, model: ModelFactory) -> None:
    """Without an <image> tag the markers are put before the text."""
    h = drv.init(model(hidden_size=HIDDEN))
    keep: list[object] = []
    h.collect(
        h.multimodal("describe", keep, image=np.ones((1, 2, HIDDEN), np.float32)), h.infer(keep)
    )
    assert (
        "user\n<|vision_start|><|vision_end|>describe" in h.last_input()["inputs"][0]["templated"]
    )


def test_video_input_on_13(drv: Driver, model: ModelFactory) -> None:
    """1.3 video: n_video x n_frame_per_video x n_frame_tokens rows are read and checksummed."""
    if drv.abi != "1.3":
        pytest.skip("video input is a 1.3 field")
    h = drv.init(model(hidden_size=HIDDEN))
    image = np.full((1, 2, HIDDEN), 0.5, np.float32)
    video = np.linspace(-1, 1, 2 * 3 * 4 * HIDDEN, dtype=np.float32).reshape(2, 3, 4, HIDDEN)
    keep: list[object] = []
    run = h.collect(
        h.multimodal("<image> then <video>", keep, image=image, video=video), h.infer(keep)
    )
    assert run.rc == 0
    text = run.text()
    assert f"[image n=1x2x{HIDDEN} fnv={fnv1a(image)}] " in text
    assert f"[video n=2x3x4x{HIDDEN} fnv={fnv1a(video)}] " in text
    assert h.last_input()["inputs"][0]["prefill_tokens"] > 2 + 24


@pytest.mark.parametrize("field", ["n_image", "n_image_tokens", "embed"])
def test_inconsistent_image_sizes_are_rejected(
    drv: Driver, model: ModelFactory, field: str
) -> None:
    """An image pointer with zero counts, or counts without a pointer: -1."""
    h = drv.init(model(hidden_size=HIDDEN))
    keep: list[object] = []
    inp = h.multimodal("x", keep, image=np.ones((1, 2, HIDDEN), np.float32))
    mm = inp.multimodal_input if drv.abi == "1.2" else inp.multimodal_input.image
    if field == "embed":
        mm.image_embed = drv.ffi.NULL
    else:
        setattr(mm, field, 0)
    assert h.run_input(inp, h.infer(keep)) == -1


def test_multimodal_null_prompt_is_rejected(drv: Driver, model: ModelFactory) -> None:
    """A multimodal input needs its prompt text."""
    h = drv.init(model(hidden_size=HIDDEN))
    keep: list[object] = []
    inp = h.multimodal("x", keep)
    inp.multimodal_input.prompt = drv.ffi.NULL
    assert h.run_input(inp, h.infer(keep)) == -1
