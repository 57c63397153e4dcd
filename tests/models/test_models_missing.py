"""Missing values: the one way the package imputes them, and the share it reports."""

from __future__ import annotations

import numpy as np

from models import channel_means, impute_missing, missing_fraction


def test_forward_fill_then_the_channel_mean() -> None:
    nan = np.nan
    window = np.array(
        [[nan, 1.0], [2.0, nan], [nan, nan], [4.0, 5.0]], dtype=np.float32
    )  # (T=4, F=2)
    filled = impute_missing(window[None], np.array([10.0, 20.0]))
    assert filled.dtype == np.float32
    np.testing.assert_array_equal(filled[0], [[10.0, 1.0], [2.0, 1.0], [2.0, 1.0], [4.0, 5.0]])
    assert np.isnan(window).sum() == 4  # the input is left as it was


def test_a_window_without_gaps_comes_back_unchanged() -> None:
    windows = np.arange(24, dtype=np.float64).reshape(2, 4, 3)
    assert impute_missing(windows, np.zeros(3)) is windows
    np.testing.assert_array_equal(missing_fraction(windows), [0.0, 0.0])


def test_missing_fraction_per_window() -> None:
    windows = np.zeros((3, 4, 2))
    windows[1, 0, 0] = np.nan
    windows[2] = np.nan
    np.testing.assert_allclose(missing_fraction(windows), [0.0, 1 / 8, 1.0])
    assert missing_fraction(np.zeros((0, 4, 2))).shape == (0,)


def test_channel_means_skip_missing_values() -> None:
    windows = np.array([[[1.0, np.nan], [3.0, np.nan]]])
    np.testing.assert_allclose(channel_means(windows), [2.0, 0.0])
