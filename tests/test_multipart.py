"""Multi-part tuning requests (issue 18 point 2): a split shared in length-sorted parts, each padded only to
its own longest row, evaluated for every candidate in ONE request.

* :func:`data_owner.backends.secure.plan_parts`: a partition of the rows, the padding bound met with the
  fewest parts (checked against every partition of small splits), ``max_sequences`` honoured per part;
* the servers' program in process (2pc and 3pc, both heads, candidate groups under ``max_sequences``):
  the secure multi-part losses and logits against the float64 computation of the whole split padded to its
  longest row, which itself equals the same per-part computation in plaintext;
* the data owner's oracle over a plaintext stand-in for the cluster: one request per generation, its rows
  put back in the split's order, the same loss as the unpadded plaintext computation;
* refusals: an empty part, inconsistent parts and parameters are a clear PlanError before any share is
  touched.  ``tests/test_multipart_cluster.py`` runs the same over gRPC.
"""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
from helpers_models import make_tiny_model

from data_owner.backends.secure import SecureOracle, plan_parts
from data_owner.config import DEFAULT_MAX_PADDING
from model_owner.share import share_model
from mpc_core.nn import (
    AttentionConfig,
    MLMHead,
    PlainBackend,
    SimilarityHead,
    candidate_logits,
    candidate_losses,
)
from mpc_core.nn.heads import similarity_anchors
from mpc_core.nn.loss import loss_fn
from mpc_core.nn.weights import load_checkpoint
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class
from proto.contracts import TuningParams, padding_mask
from server.execute import run_in_process
from server.model_store import load_model
from server.programs.base import PlanError
from server.programs.tuning import PromptTuning

pytestmark = pytest.mark.timeout(300)

FP = FixedPoint()
L, P, C = 2, 3, 2
#: real tokens per example, unsorted: one part padded to 12 would hold 1.7x the real tokens.
LENGTHS = [5, 12, 6, 5, 11, 7]
T = max(LENGTHS)
#: secure against float64, tiny 1-layer BERT, 16 fractional bits, both suites and heads: the largest errors
#: measured were 6.5e-5 on the losses (values up to 0.8) and 4.5e-4 on the logits (up to 2.8); ~10x headroom.
LOSS_ATOL, LOGIT_ATOL = 2e-3, 5e-3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny", "bert", mlm=True, num_hidden_layers=1)


@pytest.fixture(scope="module")
def weights(checkpoint):
    return load_checkpoint(checkpoint)


# ---------------------------------------------------------------------------------------------- plan_parts
def _padded(lengths: np.ndarray, parts: list[np.ndarray]) -> int:
    return int(sum(len(rows) * lengths[rows].max() for rows in parts))


def test_plan_parts_meets_the_bound_with_the_fewest_parts() -> None:
    """Against every split of the sorted rows into contiguous runs (n = 9), for several bounds."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(4, 40, size=9)
    ordered = np.sort(lengths)
    for bound in (1.0, 1.05, 1.15, 1.3, 2.0, float("inf")):
        parts = plan_parts(lengths, bound)
        assert sorted(np.concatenate(parts).tolist()) == list(range(9))
        assert all(lengths[a].max() <= lengths[b].min() for a, b in itertools.pairwise(parts))
        fewest = None
        for k in range(1, 10):
            best = min(
                sum((b - a) * ordered[b - 1] for a, b in itertools.pairwise((0, *cuts, 9)))
                for cuts in itertools.combinations(range(1, 9), k - 1)
            )
            if best <= bound * ordered.sum():
                fewest = k
                break
        assert fewest is not None  # nine parts of one row each waste nothing
        expected = min(fewest, 8)  # at most MAX_PARTS parts: then the least padding of eight
        assert len(parts) == expected, bound
        if fewest <= 8:
            assert _padded(lengths, parts) <= bound * lengths.sum()


def test_plan_parts_honours_max_sequences_and_refuses_nonsense() -> None:
    lengths = np.array([8, 45, 9, 10, 30, 31, 12, 14, 9, 40])
    for cap in (1, 3, 4, 16):
        parts = plan_parts(lengths, 1.15, max_rows=cap)
        assert all(len(rows) <= cap for rows in parts)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(lengths)))
    assert [len(r) for r in plan_parts(lengths, float("inf"))] == [len(lengths)]  # one padded part
    assert len(plan_parts(lengths, float("inf"), max_rows=4)) == 3
    assert len(plan_parts(lengths, 1.15, max_rows=1)) == len(lengths)  # cap beyond MAX_PARTS: runs
    with pytest.raises(ValueError, match="at least one"):
        plan_parts(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"at least 1\.0"):
        plan_parts(lengths, 0.9)


# ------------------------------------------------------------------------------------ the servers' program
def _data(cfg, head: str, seed: int = 5):
    """A split of len(LENGTHS) rows padded to T, its labels, candidates and (similarity) anchors."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(LENGTHS), T, cfg.hidden)) * 0.5
    y = np.eye(C)[rng.integers(0, C, size=len(LENGTHS))]
    prompts = rng.normal(size=(P, L, cfg.hidden)) * 0.05
    extra = {}
    if head == "similarity":
        extra = {"anchors.x": rng.normal(size=(C, 5, cfg.hidden)) * 0.5}
    return x, y, prompts, extra


def _head_params(head: str) -> dict:
    if head == "mlm":
        return {"head": "mlm", "label_words": [7, 9]}
    return {"head": "similarity", "anchor_lengths": [5, 4], "scale": 5.0, "pool_exclude": [1, 2]}


def multipart_request(x, y, prompts, extra, head: str, output: str, parts, **changes):
    """(secrets, params) of one multi-part request over the parts ``parts`` (row indices)."""
    secrets = {"prompts": prompts, **extra}
    specs = []
    lengths = np.asarray(LENGTHS)
    for i, rows in enumerate(parts):
        t = int(lengths[rows].max())
        secrets[f"train.p{i}.x"] = x[rows, :t]
        if output == "losses":
            secrets[f"train.p{i}.y"] = y[rows]
        spec = {"name": f"train.p{i}", "lengths": lengths[rows].tolist()}
        if head == "mlm":
            spec["mask_positions"] = (lengths[rows] - 2).tolist()
        specs.append(spec)
    params = {"split": "train", "output": output, "parts": specs, **_head_params(head), **changes}
    return secrets, params


def plaintext(weights, cfg, x, y, prompts, extra, head: str, output: str, lengths, positions=None):
    """The float64 computation of ``x`` as ONE part (rows padded to x's width): losses [P] or logits."""
    _, w = weights
    mask = padding_mask(lengths, x.shape[1])
    pool = None
    if head == "mlm":
        h = MLMHead((7, 9))
        positions = np.asarray(lengths) - 2 if positions is None else positions
    else:
        anchors = similarity_anchors(w, cfg, extra["anchors.x"], padding_mask([5, 4], 5))
        h = SimilarityHead(anchors, scale=5.0)
        pool = mask.copy()
        pool[:, [1, 2]] = 0
    B, attn = PlainBackend(w), AttentionConfig(mode="softmax")
    if output == "losses":
        return candidate_losses(B, cfg, attn, h, x, prompts, y, mask, positions, pool_mask=pool)
    return candidate_logits(B, cfg, attn, h, x, prompts, mask, positions, pool)


def _secure(tmp_path, checkpoint, suite: str, secrets: dict, params: dict, output: str) -> np.ndarray:
    folder = tmp_path / f"model-{suite}"
    if not (folder / "manifest.json").exists():
        share_model(checkpoint, suite, folder)
    cls = suite_class(suite)
    prg = PRG(b"multipart-tests!")
    split = {name: cls.split(FP.encode(v), prg) for name, v in secrets.items()}
    parties = len(next(iter(split.values())))
    models = [
        load_model(folder, participant=p, holds_shares=p < parties, suite=suite, frac_bits=16)
        for p in range(cls.participants)
    ]
    shares = [{name: s[p] for name, s in split.items()} for p in range(parties)]
    out = run_in_process(
        suite,
        "prompt_tuning",
        json.dumps(params),
        shares,
        {n: v.shape for n, v in secrets.items()},
        test_seed=b"multipart",
        models=models,
    )
    return FP.decode(cls.combine([out[p][output][0] for p in range(parties)]))


@pytest.mark.parametrize(
    ("head", "output", "max_sequences"),
    [("mlm", "losses", 0), ("similarity", "logits", 0), ("mlm", "losses", 4)],
)
def test_multipart_secure_matches_the_unpadded_plaintext(
    tmp_path, checkpoint, weights, suite: str, head: str, output: str, max_sequences: int
) -> None:
    """Secure multi-part == float64 whole split (one padded part) within LOSS_ATOL / LOGIT_ATOL; in
    plaintext the per-part computation equals the whole-split one to float64 rounding.  ``max_sequences``
    4 makes the servers run each part in candidate groups (a part of 2 rows: 2 candidates a pass)."""
    cfg, _ = weights
    x, y, prompts, extra = _data(cfg, head)
    parts = plan_parts(np.asarray(LENGTHS), 1.15)
    assert len(parts) >= 2  # the test is about several parts
    secrets, params = multipart_request(
        x, y, prompts, extra, head, output, parts, max_sequences=max_sequences
    )
    got = _secure(tmp_path, checkpoint, suite, secrets, params, output)
    whole = plaintext(weights, cfg, x, y, prompts, extra, head, output, LENGTHS)
    # the same per-part computation in plaintext: logits per part, joined, the loss once
    per_part = [
        plaintext(weights, cfg, secrets[f"train.p{i}.x"], None, prompts, extra, head, "logits", rows_len)
        for i, rows_len in enumerate(np.asarray(LENGTHS)[rows] for rows in parts)
    ]
    joined = np.concatenate(per_part, axis=1)
    order = np.concatenate(parts)
    if output == "losses":
        fn = loss_fn("ce")
        assert np.allclose(fn(PlainBackend(weights[1]), joined, y[order]), whole, rtol=0, atol=1e-10)
        assert got.shape == (P,)
        assert np.allclose(got, whole, atol=LOSS_ATOL), np.abs(got - whole).max()
    else:
        assert np.allclose(joined, whole[:, order], rtol=0, atol=1e-10)
        assert got.shape == (P, len(LENGTHS), C)
        assert np.allclose(got, whole[:, order], atol=LOGIT_ATOL), np.abs(got - whole[:, order]).max()


# ------------------------------------------------------------------------- the data owner's secure oracle
class PlaintextCluster:
    """A stand-in for :class:`data_owner.client.RemoteJob`: keeps the uploads (ring elements, decoded)
    and answers ``generate`` with the program's computation in float64, counting requests."""

    suite = "2pc"

    def __init__(self, weights, cfg) -> None:
        self.weights, self.cfg = weights, cfg
        self.stored: dict[str, np.ndarray] = {}
        self.requests: list[TuningParams] = []

    def upload(self, name: str, ring: np.ndarray) -> None:
        self.stored[name] = FP.decode(ring)

    def generate(self, secrets, inputs, params: TuningParams, reveal):
        self.requests.append(params)
        values = {**self.stored, **{n: FP.decode(v) for n, v in secrets.items()}}
        logits, labels = [], []
        for part in params.part_list():
            x = values[f"{part.name}.x"]
            positions = np.asarray(part.mask_positions)
            prompts = values["prompts"]
            args = (self.weights, self.cfg, x, None, prompts, {}, "mlm", "logits", part.lengths, positions)
            logits.append(plaintext(*args))
            if params.output == "losses":
                labels.append(values[f"{part.name}.y"])
        joined = np.concatenate(logits, axis=1)
        if params.output == "losses":
            joined = loss_fn(params.loss)(PlainBackend(self.weights[1]), joined, np.concatenate(labels))
        ring = FP.encode(joined)
        outputs = {params.output: SimpleNamespace(scale=FP.frac_bits)}
        return SimpleNamespace(
            reveal_float=lambda name: FP.decode(ring),
            outputs=outputs,
            metrics={0: {"wire": {"bytes_sent": 0}, "ops": {}}},
        )


def _encoded_split(x, y, mask_pos):
    from data_owner.encode import EncodedSplit

    return EncodedSplit(
        embeds=x,
        attention_mask=padding_mask(LENGTHS, T),
        mask_pos=np.asarray(mask_pos),
        labels=y.argmax(1),
        num_classes=C,
        prompt_length=L,
        input_ids=np.zeros((len(LENGTHS), T), dtype=np.int64),
    )


@pytest.mark.parametrize("max_sequences", [0, 2])
def test_oracle_sends_one_request_and_restores_the_row_order(weights, max_sequences: int) -> None:
    """The oracle's multi-part loss and logits equal the plaintext whole-split ones (up to the 2^-16 of
    fixed-point encoding), from one request per call; ``max_sequences`` caps the rows of every part."""
    cfg, _ = weights
    x, y, prompts, _ = _data(cfg, "mlm")
    cluster = PlaintextCluster(weights, cfg)
    config = SimpleNamespace(
        max_sequences=max_sequences,
        max_padding=DEFAULT_MAX_PADDING,
        similarity_scale=20.0,
        attention="softmax",
        features=64,
    )
    oracle = SecureOracle(cluster, FP, 2, "mlm", config, None, [7, 9])
    positions = np.asarray(LENGTHS) - 2
    oracle.upload("train", _encoded_split(x, y, positions), loss="ce")
    oracle.upload("dev", _encoded_split(x, y, positions))
    parts = oracle.parts["train"]
    assert len(parts) >= 2 and (not max_sequences or all(len(r) <= max_sequences for r in parts))
    assert oracle.padding("train") <= 1.15 or max_sequences
    whole_padding = len(LENGTHS) * T / sum(LENGTHS)
    assert oracle.padding("train") < whole_padding
    x_fp = FP.decode(FP.encode(x))
    p_fp = FP.decode(FP.encode(prompts))
    losses = oracle.losses(prompts)
    assert len(cluster.requests) == 1 and cluster.requests[0].max_sequences == max_sequences
    expected = plaintext(weights, cfg, x_fp, y, p_fp, {}, "mlm", "losses", LENGTHS)
    assert np.allclose(losses, expected, atol=1e-4), np.abs(losses - expected).max()
    logits = oracle.logits(prompts, "dev")
    assert len(cluster.requests) == 2
    expected = plaintext(weights, cfg, x_fp, None, p_fp, {}, "mlm", "logits", LENGTHS)
    assert np.allclose(logits, expected, atol=1e-4), np.abs(logits - expected).max()


# ----------------------------------------------------------------------------------------------- refusals
def _planner(weights):
    """``plan(secrets, params)``: the servers' plan of a request, from the secrets' shapes."""
    cfg, _ = weights
    model = SimpleNamespace(manifest={"config": cfg.model_dump()})

    def plan(secrets, params):
        program = PromptTuning()
        parsed = program.parse_params(json.dumps(params))
        return program.plan({n: tuple(np.shape(v)) for n, v in secrets.items()}, parsed, model)

    return plan


def test_plan_refuses_empty_and_inconsistent_parts(weights) -> None:
    """Every malformed multi-part request is refused by the plan (before a share is stored or a peer is
    asked anything), with a message naming what is wrong."""
    cfg, _ = weights
    plan = _planner(weights)
    x, y, prompts, extra = _data(cfg, "mlm")
    parts = plan_parts(np.asarray(LENGTHS), 1.15)
    secrets, params = multipart_request(x, y, prompts, extra, "mlm", "losses", parts)
    assert plan(secrets, params) == {"losses": (P,)}
    _, logit_params = multipart_request(x, y, prompts, extra, "mlm", "logits", parts)
    logit_secrets = {n: v for n, v in secrets.items() if not n.endswith(".y")}
    assert plan(logit_secrets, logit_params) == {"logits": (P, len(LENGTHS), C)}

    def changed(part: int, **fields):
        specs = [dict(s) for s in params["parts"]]
        specs[part].update(fields)
        return {**params, "parts": specs}

    first = params["parts"][0]
    empty = {**secrets, "train.p0.x": x[:0, :4], "train.p0.y": y[:0]}
    cases = [
        (empty, changed(0, lengths=[], mask_positions=[]), "empty part"),
        (secrets, changed(0, lengths=first["lengths"][:-1]), "part 'train.p0': lengths"),
        (secrets, changed(0, lengths=[T + 1] * len(first["lengths"])), "lengths"),
        (secrets, changed(0, mask_positions=first["mask_positions"][:-1]), "mask positions"),
        (secrets, changed(1, name="train.p0"), "distinct names"),
        (secrets, {**params, "lengths": LENGTHS}, "per part, not at the top"),
        ({n: v for n, v in secrets.items() if n != "train.p1.y"}, params, "takes inputs"),
        ({**secrets, "train.p1.y": np.eye(3)[:1]}, params, "one-hot"),
        ({**secrets, "train.p0.x": x[:1, :3]}, params, "do not fit"),
        ({**secrets, "train.p0.x": x[:1, :4, :4]}, params, "hidden size"),
        ({**secrets, "train.p0.x": x[:1, :4, 0]}, params, r"\[n, T, H\]"),
        (secrets, {**params, "parts": []}, "at least 1 item"),
        (secrets, {**params, "parts": [first] * 17}, "at most 16 items"),
        (secrets, changed(0, rows=3), "Extra inputs"),
    ]
    for bad_secrets, bad_params, why in cases:
        with pytest.raises(PlanError, match=why):
            plan(bad_secrets, bad_params)
