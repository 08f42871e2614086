"""The ``prompt_tuning`` program on real clusters: a tiny shared BERT (secp-share-model output), the
batched secure forward of several candidate prompts through gRPC, compared with the in-process run
(identical shares, same test seed) and with the float64 plaintext model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_models import make_tiny_model, random_batch

from cluster_ops.testing import running_cluster
from data_owner.client import ClusterClient
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
from mpc_core.nn.weights import load_checkpoint
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class
from proto.contracts import padding_lengths, padding_mask
from server.execute import run_in_process
from server.model_store import load_model

pytestmark = pytest.mark.timeout(300)

FP = FixedPoint()
N, T, L, P, C = 3, 10, 2, 2, 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny", "bert", mlm=True, num_hidden_layers=1)


def _inputs(cfg, head: str, output: str):
    rng = np.random.default_rng(5)
    _, mask = random_batch(rng, N, T, cfg.vocab, 0, 2, 3, min_len=L + 3)
    x = rng.normal(size=(N, T, cfg.hidden)) * 0.5
    secrets = {"train.x": x, "prompts": rng.normal(size=(P, L, cfg.hidden)) * 0.05}
    params = {
        "split": "train",
        "output": output,
        "head": head,
        "lengths": padding_lengths(mask),
        "loss": "ce",
    }
    if output == "losses":
        secrets["train.y"] = np.eye(C)[rng.integers(0, C, size=N)]
    if head == "mlm":
        params["label_words"] = [7, 9]
        params["mask_positions"] = [int(m.sum()) - 2 for m in mask]
    else:
        secrets["anchors.x"] = rng.normal(size=(C, 5, cfg.hidden)) * 0.5
        params["anchor_lengths"] = [5, 4]
        params["scale"] = 5.0
        params["pool_exclude"] = list(range(1, 1 + L))  # the prompt rows: attended, not pooled
    return secrets, params


def _plaintext(weights, cfg, secrets, params):
    mask = padding_mask(params["lengths"], T)
    attn = AttentionConfig(mode="softmax")
    if params["head"] == "mlm":
        head = MLMHead(tuple(params["label_words"]))
        positions = np.asarray(params["mask_positions"])
    else:
        anchors = similarity_anchors(
            weights, cfg, secrets["anchors.x"], padding_mask(params["anchor_lengths"], 5)
        )
        head = SimilarityHead(anchors, scale=params["scale"])
        positions = None
    pool = None
    if "pool_exclude" in params:
        pool = mask.copy()
        pool[:, params["pool_exclude"]] = 0
    B = PlainBackend(weights)
    if params["output"] == "losses":
        return candidate_losses(
            B,
            cfg,
            attn,
            head,
            secrets["train.x"],
            secrets["prompts"],
            secrets["train.y"],
            mask,
            positions,
            pool_mask=pool,
        )
    return candidate_logits(B, cfg, attn, head, secrets["train.x"], secrets["prompts"], mask, positions, pool)


@pytest.mark.parametrize(
    ("suite", "head", "output"), [("2pc", "mlm", "losses"), ("3pc", "similarity", "logits")]
)
def test_prompt_tuning_batch_matches_in_process_and_plaintext(tmp_path, checkpoint, suite, head, output):
    manifest = share_model(checkpoint, suite, tmp_path / "model")
    cfg = manifest.config
    secrets, params = _inputs(cfg, head, output)
    prg = PRG(b"tuning-test-seed")
    split = {name: suite_class(suite).split(FP.encode(v), prg) for name, v in secrets.items()}
    parties = len(next(iter(split.values())))
    seed = b"prompt-tuning"
    with running_cluster(tmp_path, suite, model="model") as (config, _), ClusterClient(config) as client:
        digest = client.server_info()[0].model_digest
        job = client.open_job("prompt_tuning", model_digest=digest, test_seed=seed)
        for name, shares in split.items():
            job.upload_shares(name, shares)
        outputs = job.evaluate(params=params)
        assert outputs[output].shape == ((P,) if output == "losses" else (P, N, C))
        got = job.fetch_shares(output)
        value = job.reveal_float(output)
        job.evaluate(params=params)  # a second batch reuses the job's state (anchors, fixed weights)
        assert np.allclose(job.reveal_float(output), value, atol=2e-3)
        status = job.status()
        assert all(s.batches_done == 2 for s in status.values())
        job.close()
    models = [
        load_model(
            config.model, participant=p, holds_shares=p in config.compute_parties, suite=suite, frac_bits=16
        )
        for p in range(3)
    ]
    shares = [{name: s[p] for name, s in split.items()} for p in range(parties)]
    reference = run_in_process(
        suite,
        "prompt_tuning",
        json.dumps(params),
        shares,
        {n: v.shape for n, v in secrets.items()},
        test_seed=seed,
        models=models,
    )
    for p in range(parties):
        assert np.array_equal(got[p], reference[p][output][0]), f"participant {p}'s share differs"
    _, weights = load_checkpoint(checkpoint)
    expected = _plaintext(weights, cfg, secrets, params)
    assert value.shape == expected.shape
    assert np.allclose(value, expected, atol=5e-2), np.abs(value - expected).max()


def _planner(checkpoint, tmp_path):
    """``plan(**changes)``: the servers' plan of a similarity-head logits batch, parameters changed."""
    from types import SimpleNamespace

    from proto.contracts import TuningParams
    from server.programs.tuning import PromptTuning

    manifest = share_model(checkpoint, "2pc", tmp_path / "model")
    model = SimpleNamespace(manifest={"config": manifest.config.model_dump()})
    _, params = _inputs(manifest.config, "similarity", "logits")
    hidden = manifest.config.hidden
    shapes = {"train.x": (N, T, hidden), "prompts": (P, L, hidden), "anchors.x": (C, 5, hidden)}

    def plan(**changes):
        return PromptTuning().plan(shapes, TuningParams(**{**params, **changes}), model)

    return plan, params


def test_plan_refuses_bad_pool_exclusions(checkpoint, tmp_path):
    """The servers check the public pooling exclusions like the padding mask, before any share is touched."""
    from server.programs.base import PlanError

    plan, params = _planner(checkpoint, tmp_path)
    assert plan() == {"logits": (P, N, C)}
    shortest = min(params["lengths"])
    for bad, why in [
        ([1, T], "distinct positions"),
        ([-1], "distinct positions"),
        ([1, 1], "distinct positions"),
        (list(range(shortest)), "no row to pool"),
    ]:
        with pytest.raises(PlanError, match=why):
            plan(pool_exclude=bad)


def test_plan_refuses_bad_lengths(checkpoint, tmp_path):
    """Example and anchor lengths must give one length in [1, T] per row; checked in the plan."""
    from server.programs.base import PlanError

    plan, _ = _planner(checkpoint, tmp_path)
    for field, bad in [
        ("lengths", [T] * (N - 1)),
        ("lengths", [T + 1] * N),
        ("lengths", [0] + [T] * (N - 1)),
        ("anchor_lengths", [5]),
        ("anchor_lengths", [5, 6]),
        ("anchor_lengths", None),
    ]:
        with pytest.raises(PlanError, match=field):
            plan(**{field: bad})


def test_padding_lengths_refuses_masks_that_are_not_right_padded():
    mask = padding_mask([3, 1, 4], 4)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert padding_lengths(mask) == [3, 1, 4]
    for bad in ([[0, 1, 1]], [[1, 0, 1]], [[2, 0, 0]]):
        with pytest.raises(ValueError, match="right padding"):
            padding_lengths(np.array(bad))


def test_parameters_of_a_large_split_fit_the_servers_parameter_limit():
    """Lengths, not [n, T] masks: one request over 2,000 examples of 128 tokens stays under the default
    ``max_params_bytes`` (a mask of that size would take about 1 MB as JSON)."""
    from contract.cluster import Limits
    from proto.contracts import TuningParams

    params = TuningParams(
        split="test.p0",
        output="logits",
        head="similarity",
        lengths=[128] * 2000,
        pool_exclude=list(range(1, 6)),
        anchor_lengths=[7, 7],
    )
    assert len(params.model_dump_json().encode()) < Limits().max_params_bytes
