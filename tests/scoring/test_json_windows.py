"""JSON windows to numpy: the flat fast path must agree with numpy's own conversion."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.schemas.score_codecs import _regular_windows


def test_regular_windows_equal_numpys_conversion() -> None:
    rng = np.random.default_rng(3)
    values = rng.standard_normal((5, 16, 3)) * 10.0 ** rng.integers(-30, 30, (5, 16, 3))
    nested = values.tolist()
    nested[0][0][0] = 7  # ints and floats mixed, as JSON gives them
    got = _regular_windows(nested, 16, 3)
    assert got is not None and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.asarray(nested, dtype=np.float32))


@pytest.mark.parametrize(
    "windows",
    [
        [[[1.0, 2.0]] * 4] * 2 + [[[1.0, 2.0]] * 3],  # a short window
        [[[1.0, 2.0]] * 4, [[1.0, 2.0]] * 3 + [[1.0]]],  # a short step
        [[[1.0, 2.0]] * 3 + ["ab"]],  # a string where a step belongs
        [[[1.0, 2.0]] * 3 + [[1.0, [2.0]]]],  # a list where a number belongs
        [[[1.0, 2.0]] * 3 + [[1.0, {"a": 1}]]],
        [{"a": 1, "b": 2, "c": 3, "d": 4}],  # a mapping of the right length
    ],
)
def test_anything_irregular_is_left_to_the_slow_path(windows: list[Any]) -> None:
    assert _regular_windows(windows, 4, 2) is None
