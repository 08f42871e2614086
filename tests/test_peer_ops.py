"""bench.peer_ops: the project's rows for the peers' side-by-side table (``../shared/peers``).

The peers' ``common.py`` gives the cases and references; where that folder is not beside the project (a
clone on its own) the end-to-end test has nothing to run against and is skipped, saying so.
"""

from __future__ import annotations

import pytest

from bench import peer_ops


def _common():
    try:
        return peer_ops.load_common()
    except SystemExit as exc:
        pytest.skip(str(exc))


def test_a_missing_peers_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SystemExit, match=r"common\.py"):
        peer_ops.load_common(tmp_path)


def test_every_secure_op_names_a_peer_case() -> None:
    common = _common()
    cases = {(c["op"], c.get("variant")) for c in common.cases()}
    assert set(peer_ops.SECURE_OPS) <= cases
    assert {op for op, _ in cases} == {op for op, _ in peer_ops.SECURE_OPS}  # every peer op has a row


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_layernorm_row_matches_the_peers_reference_and_schema(suite: str) -> None:
    common = _common()
    (case,) = common.cases(only=["layernorm"])
    row = peer_ops.measure_case(common, case, suite, reps=1)
    assert row["engine"] == "secp-tuning" and row["op"] == "layernorm" and row["shape"] == [128, 768]
    assert row["max_abs_err"] < 1e-3  # against the peers' own float64 LayerNorm (eps 1e-5)
    assert row["bytes"] == row["bytes_parties"] + row["bytes_dealer"] > 0
    assert (row["bytes_dealer"] > 0) == (suite == "2pc")
    assert row["rounds"] > 0 and row["seconds"] > 0 and row["runs"] >= 1
