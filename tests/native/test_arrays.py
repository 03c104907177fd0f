"""Array validation and conversion: dtypes, shapes, ranges, zero copy, list input."""

from __future__ import annotations

import numpy as np
import pytest

from rkllm_sdk import ArrayTypeError, InvalidParamsError, arrays


def test_token_ids_from_lists_and_wider_ints() -> None:
    """Lists and int64 in range become int32; the values are kept."""
    out = arrays.token_ids([1, 2, 151935])
    assert out.dtype == np.int32
    assert out.tolist() == [1, 2, 151935]
    assert arrays.token_ids(np.array([7], dtype=np.uint16)).tolist() == [7]


def test_token_ids_zero_copy_when_already_int32() -> None:
    """A C-contiguous int32 array is used as is; a strided one is copied."""
    ids = np.arange(10, dtype=np.int32)
    assert arrays.token_ids(ids) is ids
    strided = np.arange(20, dtype=np.int32)[::2]
    out = arrays.token_ids(strided)
    assert out.flags.c_contiguous
    assert not np.shares_memory(out, strided)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([1.0, 2.0], ArrayTypeError, "expected integers"),
        ([True, False], ArrayTypeError, "expected integers"),
        (["a"], ArrayTypeError, "expected integers"),
        ([[1, 2]], InvalidParamsError, "expected 1 dimensions"),
        ([], InvalidParamsError, "expected integers|empty"),
        ([-1, 2], InvalidParamsError, "must be in"),
        ([2**31], InvalidParamsError, "must be in"),
        ([[1], [2, 3]], InvalidParamsError, "rectangular"),
    ],
)
def test_token_ids_rejected(value: object, error: type[Exception], message: str) -> None:
    """Floats, bools, strings, wrong shapes, empty, negative and over-int32 ids are refused."""
    with pytest.raises(error, match=message):
        arrays.token_ids(value)


def test_token_ids_vocabulary_check() -> None:
    """With vocab_size, an id at or above it is refused."""
    arrays.token_ids([0, 99], vocab_size=100)
    with pytest.raises(InvalidParamsError, match="outside the vocabulary of 100"):
        arrays.token_ids([100], vocab_size=100)


def test_embeddings_dtypes() -> None:
    """float32 passes through, float16 / float64 convert, integers are refused."""
    f32 = np.ones((2, 4), np.float32)
    assert arrays.embeddings(f32) is f32
    assert arrays.embeddings(np.ones((2, 4), np.float64)).dtype == np.float32
    assert arrays.embeddings([[0.5, 1.5]]).dtype == np.float32
    with pytest.raises(ArrayTypeError, match="expected float32"):
        arrays.embeddings(np.ones((2, 4), np.int32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_embeddings_must_be_finite(bad: float) -> None:
    """NaN, infinity, and float64 values beyond float32's range are refused."""
    rows = np.zeros((2, 3))
    rows[1, 2] = bad
    with pytest.raises(InvalidParamsError, match="NaN or infinity"):
        arrays.embeddings(rows)


def test_embedding_shape_and_width() -> None:
    """Embeddings are [n_tokens, hidden], and the width must match when it is known."""
    with pytest.raises(InvalidParamsError, match=r"expected 2 dimensions \[n_tokens, hidden\]"):
        arrays.embeddings(np.zeros(4, np.float32))
    with pytest.raises(InvalidParamsError, match="the model's 8"):
        arrays.embeddings(np.zeros((1, 4), np.float32), hidden_size=8)


def test_image_and_video_shapes() -> None:
    """One image / video may drop its leading dimension; other ranks are refused."""
    assert arrays.image_embeddings(np.zeros((5, 8), np.float32)).shape == (1, 5, 8)
    assert arrays.image_embeddings(np.zeros((2, 5, 8), np.float32)).shape == (2, 5, 8)
    assert arrays.video_embeddings(np.zeros((3, 5, 8), np.float32)).shape == (1, 3, 5, 8)
    with pytest.raises(InvalidParamsError, match="4 dimensions"):
        arrays.video_embeddings(np.zeros((1, 1, 1, 1, 8), np.float32))
    with pytest.raises(InvalidParamsError, match="3 dimensions"):
        arrays.image_embeddings(np.zeros(8, np.float32))


def _cross(layers: int = 2, tokens: int = 3, heads: int = 2, dim: int = 4) -> dict[str, np.ndarray]:
    return {
        "k_cache": np.zeros((layers, tokens, heads, dim), np.float32),
        "v_cache": np.zeros((layers, heads, dim, tokens), np.float32),
        "mask": np.zeros(tokens, np.float32),
        "positions": np.arange(tokens, dtype=np.int64),
    }


def test_cross_attention_consistent_arrays() -> None:
    """Consistent shapes pass; positions become int32; the float arrays are not copied."""
    a = _cross()
    out = arrays.cross_attention(**a)
    assert out.num_tokens == 3
    assert out.positions.dtype == np.int32
    assert out.k_cache is a["k_cache"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v_cache": np.zeros((2, 3, 2, 4), np.float32)}, "does not match k_cache"),
        ({"mask": np.zeros(4, np.float32)}, "need num_tokens = 3"),
        ({"positions": np.zeros(3, np.float32)}, "expected integers"),
        ({"positions": np.array([0, 1, 2**40])}, "outside int32"),
        ({"k_cache": np.zeros((2, 3, 2), np.float32)}, "4 dimensions"),
    ],
)
def test_cross_attention_inconsistent_arrays(change: dict[str, np.ndarray], message: str) -> None:
    """Every disagreement between the four arrays is refused with the shapes named."""
    with pytest.raises(InvalidParamsError, match=message):
        arrays.cross_attention(**{**_cross(), **change})
