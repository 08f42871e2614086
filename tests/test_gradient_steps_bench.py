"""The bookkeeping of bench/gradient_steps.py (no cluster): traffic deltas, the modelled lan/wan times,
relative errors with zero-gradient tensors apart, and the ratios of rows from one run."""

from __future__ import annotations

import numpy as np
import pytest

from bench.gradient_steps import _relative, _traffic, modelled, ratios


def _metrics(sent: list[int], rounds: list[int]) -> dict:
    return {
        p: {"wire": {"bytes_sent": b}, "ops": {"a": {"rounds": r - 1}, "b": {"rounds": 1}}}
        for p, (b, r) in enumerate(zip(sent, rounds, strict=True))
    }


def test_traffic_is_the_delta_with_the_2pc_dealer_apart():
    before = _metrics([10, 20, 30], [3, 4, 0])
    after = _metrics([110, 220, 1030], [13, 9, 0])
    t = _traffic(before, after, "2pc")
    assert t["bytes_sent_by_participant"] == [100, 200, 1000]
    assert (t["bytes"], t["party_bytes"], t["dealer_bytes"]) == (1300, 300, 1000)
    assert t["rounds"] == 10  # the busiest compute party's
    t3 = _traffic(before, after, "3pc")
    assert (t3["party_bytes"], t3["dealer_bytes"]) == (1300, 0)


def test_modelled_network_time_is_wall_plus_rounds_latency_plus_busiest_link():
    row = {"seconds": 10.0, "rounds": 1000, "bytes_sent_by_participant": [1e9, 3e9, 2e9]}
    m = modelled(row)
    assert m["lan"] == pytest.approx(10.0 + 1000 * 0.8e-3 + 8 * 3e9 / 3e9, abs=0.05)
    assert m["wan"] == pytest.approx(10.0 + 1000 * 80e-3 + 8 * 3e9 / 100e6, abs=0.05)


def test_relative_error_sets_zero_gradient_tensors_apart():
    plain = {"w": np.array([1.0, -2.0]), "kbias": np.array([1e-14, 0.0])}
    secure = {"w": np.array([1.01, -2.0]), "kbias": np.array([3e-4, 0.0])}
    r = _relative(secure, plain)
    assert r["worst_tensor"] == pytest.approx(0.005) and r["worst_tensor_name"] == "w"
    assert r["zero_gradient_tensors"] == 1 and r["zero_gradient_max_abs_err"] == pytest.approx(3e-4)
    assert r["whole"] == pytest.approx(0.005)


def test_ratios_use_steady_rows_of_one_suite_at_batch_32():
    rows = [
        {
            "row": "forward-only, 1 candidate (job's first request)",
            "suite": "2pc",
            "seconds": 99,
            "bytes": 99,
        },
        {"row": "forward-only, 1 candidate", "suite": "2pc", "seconds": 2.0, "bytes": 10},
        {
            "row": "forward-only, CMA-ES generation (20 candidates)",
            "suite": "2pc",
            "seconds": 20.0,
            "bytes": 100,
        },
        {"row": "SFT step", "suite": "2pc", "method": "sft", "examples": 32, "seconds": 40.0, "bytes": 300},
        {
            "row": "SFT step, batch 8",
            "suite": "2pc",
            "method": "sft",
            "examples": 8,
            "seconds": 1.0,
            "bytes": 1,
        },
        {
            "row": "gradient prompt tuning step",
            "suite": "2pc",
            "method": "prompt",
            "examples": 32,
            "seconds": 10.0,
            "bytes": 200,
        },
    ]
    r = ratios(rows)["2pc"]
    assert r["sft/generation"] == {"seconds": 2.0, "bytes": 3.0}
    assert r["prompt/generation"] == {"seconds": 0.5, "bytes": 2.0}
    assert r["sft/candidate"] == {"seconds": 20.0, "bytes": 30.0}
