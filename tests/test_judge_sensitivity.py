"""benchmarks/judge_sensitivity.py: its known degradations do what they say, and the report renders its JSON."""

import json

import numpy as np
import pytest

from benchmarks import report
from benchmarks.judge_sensitivity import background_haze, degraded_sets, floor, gaussian_blur, gaussian_noise, psnr


def _digits(n: int = 6, seed: int = 0) -> np.ndarray:
    """uint8 [n, 16, 16, 1]: a black background with one bright bar each, like a digit's stroke."""
    g = np.random.default_rng(seed)
    x = np.zeros((n, 16, 16, 1), np.uint8)
    for i in range(n):
        r = int(g.integers(3, 12))
        x[i, r : r + 3, 4:12] = 255
    return x


def test_the_blur_keeps_a_flat_image_flat_spreads_an_edge_and_keeps_the_total():
    flat = np.full((2, 8, 8, 3), 77, np.uint8)
    assert np.array_equal(gaussian_blur(flat, 0.7), flat)
    x = _digits()
    y = gaussian_blur(x, 0.7)
    assert y.shape == x.shape and y.dtype == np.uint8
    assert (y[x == 0] > 0).any() and (y[x == 255] < 255).any()  # the edges spread into the background and lose height
    assert abs(float(y.astype(np.float64).sum()) - float(x.astype(np.float64).sum())) < 0.01 * float(x.sum())  # a normalised kernel
    assert psnr(gaussian_blur(x, 0.4), x) > psnr(gaussian_blur(x, 0.7), x)  # more blur, lower PSNR
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, 0.0)


def test_the_noise_is_seeded_zero_mean_and_of_the_asked_size():
    x = np.full((4, 32, 32, 1), 128, np.uint8)
    a, b = gaussian_noise(x, 5.0, seed=3), gaussian_noise(x, 5.0, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, gaussian_noise(x, 5.0, seed=4))
    d = a.astype(np.float64) - 128
    assert abs(d.mean()) < 0.2 and d.std() == pytest.approx(5.0, rel=0.05)
    assert gaussian_noise(np.zeros((1, 4, 4, 1), np.uint8), 5.0, seed=0).min() == 0  # clipped, not wrapped


def test_the_haze_touches_only_the_zero_pixels_and_stays_below_three():
    x = _digits()
    y = background_haze(x, seed=0)
    bright = x > 0
    assert np.array_equal(y[bright], x[bright])
    assert set(np.unique(y[~bright])) == {0, 1, 2}
    assert psnr(y, x) > 45  # invisible: about 1.3 grey levels RMS on the background
    assert np.array_equal(y, background_haze(x, seed=0))


def test_the_floor_zeroes_only_values_at_or_below_it_and_does_not_touch_its_input():
    x = np.array([[[[0], [1], [2], [3], [200]]]], np.uint8)
    assert floor(x, 2).ravel().tolist() == [0, 0, 0, 3, 200]
    assert x.ravel().tolist() == [0, 1, 2, 3, 200]


def test_the_sets_start_with_the_reconstruction_and_name_every_degradation():
    x = _digits()
    sets = degraded_sets(x, x, seed=0)
    assert list(sets) == ["reconstruction", "reconstruction_floor_2", "reconstruction_floor_8", "blur_0.4", "blur_0.5",
                          "blur_0.7", "noise_1", "noise_2", "noise_5", "haze"]
    assert all(v.shape == x.shape and v.dtype == np.uint8 for v in sets.values())
    assert psnr(x, x) == float("inf")


def test_report_renders_the_sensitivity_table_and_the_reconstruction_check(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    assert "judge sensitivity" not in "\n".join(report.render(tmp_path))
    per = lambda fd, rc: {"fd": fd, "precision": 1.0, "recall": rc}  # noqa: E731
    r = {"command": "python -m benchmarks.judge_sensitivity --run /tmp/r --out x.json", "run": "/tmp/r", "num": 500,
         "real": {"classifier": 0.326, "effnet_lite0": 6.883}, "real_zero_fraction": 0.851,
         "rows": [{"set": "reconstruction", "psnr": 29.6, "zero_fraction": 0.556, "classifier": per(2.878, 0.98), "effnet_lite0": per(2.541, 0.77)},
                  {"set": "haze", "psnr": 48.9, "zero_fraction": 0.284, "classifier": per(2.516, 0.97), "effnet_lite0": per(1.409, None)}],
         "evaluate": {"reconstruction_row_matches": True}, "note": "The default run.", "provenance": {"git_commit": "abc"}}
    (tmp_path / "benchmarks" / "judge_sensitivity.json").write_text(json.dumps(r))
    text = "\n".join(report.render(tmp_path))
    assert "| reconstruction | 29.6 | 0.556 | 2.88 | 0.98 | 2.54 | 0.77 |" in text
    assert "| haze | 48.9 | 0.284 | 2.52 | 0.97 | 1.41 | - |" in text
    assert "85.1% of their pixels are exactly 0" in text and "reproduces the run's metrics.json: yes" in text and "The default run." in text
    r["evaluate"]["reconstruction_row_matches"] = False
    (tmp_path / "benchmarks" / "judge_sensitivity.json").write_text(json.dumps(r))
    assert "metrics.json: **no**" in "\n".join(report.render(tmp_path))
