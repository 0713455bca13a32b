"""The report's judge-spread table comes from benchmarks/judge_spread.py's JSON (rows, spread, the base-seed check)."""

import json

from benchmarks import report


def _row(seed: int, fd_ratio: float) -> dict:
    return {"seed": seed, "val_accuracy": 0.974, "class_consistency": 0.99, "fd_real": 0.32, "fd_ratio_samples": fd_ratio,
            "precision_ratio_samples": 1.0, "recall_ratio_samples": 0.84, "fd_ratio_reconstruction": 2.88,
            "precision_ratio_reconstruction": 1.0, "recall_ratio_reconstruction": 0.95}


def test_report_renders_judge_spread_rows_and_ratio(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    assert "judge spread" not in "\n".join(report.render(tmp_path))  # no file, no section
    rows = [_row(0, 3.10), _row(1, 4.65)]
    spread = {k: {"min": min(r[k] for r in rows), "max": max(r[k] for r in rows),
                  "max_over_min": max(r[k] for r in rows) / min(r[k] for r in rows)} for k in rows[0] if k != "seed"}
    r = {"command": "python -m benchmarks.judge_spread --run /tmp/r --seeds 0 1", "run": "/tmp/r", "num": 500, "rows": rows,
         "spread": spread, "evaluate": {"figures": {}, "base_seed_row_matches": True}, "provenance": {"git_commit": "abc"}}
    (tmp_path / "benchmarks" / "judge_spread.json").write_text(json.dumps(r))
    text = "\n".join(report.render(tmp_path))
    assert "| 0 | 0.974 | 0.990 | 0.320 | 3.10 | 0.84 | 2.88 | 0.95 |" in text
    assert "| 1 | 0.974 | 0.990 | 0.320 | 4.65 | 0.84 | 2.88 | 0.95 |" in text
    assert "| max / min | 1.00 | 1.00 | 1.00 | 1.50 | 1.00 | 1.00 | 1.00 |" in text
    assert "reproduces its `metrics.json`" in text
    r["evaluate"]["base_seed_row_matches"] = False
    (tmp_path / "benchmarks" / "judge_spread.json").write_text(json.dumps(r))
    assert "does **not** reproduce" in "\n".join(report.render(tmp_path))


def test_report_renders_sampling_spread_from_the_json(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    assert "sampling spread" not in "\n".join(report.render(tmp_path))
    rows = [{"seed": 0, "images": 500, "class_consistency": 0.99, "fd_ratio_classifier": 3.10, "fd_ratio_effnet_lite0": 3.279,
             "recall_ratio_classifier": 0.84, "recall_ratio_effnet_lite0": 0.52},
            {"seed": 1, "images": 500, "class_consistency": 0.986, "fd_ratio_classifier": 2.77, "fd_ratio_effnet_lite0": 3.288,
             "recall_ratio_classifier": 0.89, "recall_ratio_effnet_lite0": 0.53}]
    spread = {k: {"max_over_min": max(r[k] for r in rows) / min(r[k] for r in rows)} for k in rows[0] if k not in ("seed", "images")}
    r = {"command": "python -m benchmarks.sampling_spread --run /tmp/r --seeds 0 1", "run": "/tmp/r", "seeds": [0, 1],
         "sampler": {"name": "ddim", "steps": 25, "guidance": 3.0}, "rows": rows, "spread": spread, "base_seed_row_matches": True,
         "provenance": {"git_commit": "abc"}}
    (tmp_path / "benchmarks" / "sampling_spread.json").write_text(json.dumps(r))
    text = "\n".join(report.render(tmp_path))
    assert "| 1 | 0.986 | 2.77 | 3.288 | 0.89 | 0.53 |" in text
    assert "| max / min | 1.004 | 1.119 | 1.003 | 1.060 | 1.019 |" in text
    assert "(ddim, 25 steps, guidance 3)" in text and "reproduces its `metrics.json`" in text


def test_a_zero_in_a_spread_makes_its_max_over_min_undefined_not_a_crash(tmp_path):
    """A barely trained run (the tiny e2e project) can read a recall ratio of 0 under one judge: max / min is then
    undefined (None in the JSON, "-" in the report), and the other columns are still summarised."""
    from benchmarks.judge_spread import _summary

    assert _summary([0.0, 0.068])["max_over_min"] is None and _summary([0.0, 0.068])["max"] == 0.068
    assert _summary([2.0, 3.0])["max_over_min"] == 1.5
    rows = [_row(0, 3.10), _row(1, 4.65)]
    rows[0]["recall_ratio_samples"] = 0.0
    spread = {k: _summary([r[k] for r in rows]) for k in rows[0] if k != "seed"}
    r = {"command": "python -m benchmarks.judge_spread --run /tmp/r --seeds 0 1", "run": "/tmp/r", "num": 500, "rows": rows,
         "spread": spread, "evaluate": None, "provenance": {"git_commit": "abc"}}
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "judge_spread.json").write_text(json.dumps(r))
    assert "| max / min | 1.00 | 1.00 | 1.00 | 1.50 | - | 1.00 | 1.00 |" in "\n".join(report.render(tmp_path))
