"""The ``decoder_tuning`` program (server side of issue 12): a tiny shared LLaMA, candidate prompts in both
placements, on shares in both suites, against the float64 plaintext run of every full sequence; the plan's
refusals; the suffix cache counted against the job's memory limit.

The shares go through the servers' own code path (``server.execute.run_in_process``: the program, the
participants' contexts, each loading only its party file), so this is the computation a cluster runs.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from helpers_llama import make_tiny_llama

from model_owner.share import share_model
from mpc_core.nn.decoder import decode
from mpc_core.nn.decoder_backend import PlainDecoderBackend
from mpc_core.nn.decoder_head import NextTokenHead
from mpc_core.nn.llama_weights import load_llama_checkpoint
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class
from proto.decoder_contract import DecoderTuningParams
from server.execute import run_in_process
from server.model_store import load_model
from server.programs.base import PlanError
from server.programs.decoder import DecoderTuning, cache_bytes

FP = FixedPoint()
N, T, L, LT, P = 3, 6, 2, 2, 2
WORDS = [5, 9]
TOL = 1e-2  # issue 12's bound for secure against float64 logits


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama") / "tiny"
    make_tiny_llama(folder, seed=3, tie=request.param)
    return folder


@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory):
    """One checkpoint for the cluster test (two cluster start-ups are its cost; tied covers more inputs)."""
    return make_tiny_llama(tmp_path_factory.mktemp("llama-tied") / "tiny", seed=3, tie=True)


def _secrets(cfg, weights, placement: str, output: str):
    rng = np.random.default_rng(11)
    lengths = [6, 4, 3]
    ids = rng.integers(3, cfg.vocab, size=(N, T))
    x = weights["emb.word"][ids] * (np.arange(T)[None, :, None] < np.array(lengths)[:, None, None])
    secrets = {"train.x": x, "prompts": rng.normal(0.0, 0.05, size=(P, L, cfg.hidden))}
    if placement == "suffix":
        secrets["template.x"] = weights["emb.word"][[7, 11]]
    if cfg.tie_word_embeddings:
        secrets["verbalizer.x"] = weights["emb.word"][WORDS]
    if output == "losses":
        secrets["train.y"] = np.eye(2)[[0, 1, 1]]
    params = {"split": "train", "placement": placement, "output": output, "lengths": lengths}
    return secrets, params | {"label_words": WORDS}


def _plaintext_logits(cfg, weights, secrets, params) -> np.ndarray:
    """Each (candidate, example) sequence unpadded and run in full on the float64 backend."""
    B = PlainDecoderBackend(weights)
    if cfg.tie_word_embeddings:
        head = NextTokenHead.from_embeddings(WORDS, weights["emb.word"])
    else:
        head = NextTokenHead(WORDS)
    out = np.zeros((P, N, len(WORDS)))
    for p in range(P):
        for i, length in enumerate(params["lengths"]):
            ex, prompt = secrets["train.x"][i, :length], secrets["prompts"][p]
            if params["placement"] == "prefix":
                seq = np.concatenate([ex[:1], prompt, ex[1:]])
            else:
                seq = np.concatenate([ex, prompt, secrets["template.x"]])
            hidden = decode(B, cfg, seq[None], np.ones((1, len(seq)), dtype=np.int64))
            out[p, i] = head.logits(B, cfg, hidden, np.array([len(seq) - 1]))[0]
    return out


def _secure(tmp_path, checkpoint, suite: str, secrets, params) -> dict[str, np.ndarray]:
    manifest = share_model(checkpoint, suite, tmp_path / f"model-{suite}")
    folder = tmp_path / f"model-{suite}"
    facts = suite_class(suite)
    split = {name: facts.split(FP.encode(v), PRG(b"decoder-test-16b")) for name, v in secrets.items()}
    shares = [{name: s[p] for name, s in split.items()} for p in range(len(facts.compute_parties))]
    models = [
        load_model(folder, participant=p, holds_shares=p in facts.compute_parties, suite=suite, frac_bits=16)
        for p in range(facts.participants)
    ]
    out = run_in_process(
        suite,
        "decoder_tuning",
        json.dumps(params),
        shares,
        {n: v.shape for n, v in secrets.items()},
        models=models,
    )
    assert manifest.config.arch == "llama"
    name = params["output"]
    return facts.combine([out[p][name][0] for p in facts.compute_parties]), out[0][name][1]


@pytest.mark.parametrize(
    ("suite", "placement", "output"),
    [("2pc", "suffix", "logits"), ("3pc", "prefix", "logits"), ("2pc", "prefix", "losses")],
)
def test_decoder_batch_matches_the_plaintext_full_sequences(tmp_path, checkpoint, suite, placement, output):
    cfg, weights = load_llama_checkpoint(checkpoint)
    secrets, params = _secrets(cfg, weights, placement, output)
    ring, scale = _secure(tmp_path, checkpoint, suite, secrets, params)
    value = ring.view(np.int64) / 2.0**scale  # the output scale is its fractional bits
    logits = _plaintext_logits(cfg, weights, secrets, params)
    if output == "logits":
        assert value.shape == (P, N, len(WORDS))
        assert np.abs(value - logits).max() <= TOL, np.abs(value - logits).max()
    else:
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        expected = -(log_probs * secrets["train.y"][None]).sum(axis=-1).mean(axis=-1)
        assert value.shape == (P,)
        assert np.abs(value - expected).max() <= TOL, (value, expected)


def test_suffix_cache_on_a_cluster_is_kept_and_counted_against_the_job_limit(tmp_path, tied_checkpoint):
    """Through gRPC: the second batch reuses the kept cache (same losses); a job whose cache would not fit
    ``limits.max_job_bytes`` beside the batch's inputs is refused by every participant before the batch
    runs, saying why."""
    from cluster_ops.testing import running_cluster
    from data_owner.client import ClusterClient, ClusterError

    checkpoint = tied_checkpoint
    cfg, weights = load_llama_checkpoint(checkpoint)
    secrets, params = _secrets(cfg, weights, "suffix", "losses")
    share_model(checkpoint, "2pc", tmp_path / "model")
    facts = suite_class("2pc")
    split = {name: facts.split(FP.encode(v), PRG(b"decoder-cluster!")) for name, v in secrets.items()}
    uploaded = sum(8 * v.size for v in secrets.values())
    keeps = cache_bytes(cfg, N, T, facts.slots)
    for limit, fits in [(uploaded + keeps, True), (uploaded + keeps - 1, False)]:
        folder = tmp_path / f"cluster-{limit}"
        folder.mkdir()
        (folder / "model").symlink_to(tmp_path / "model")
        with (
            running_cluster(folder, "2pc", model="model", limits={"max_job_bytes": limit}) as (config, _),
            ClusterClient(config) as client,
        ):
            digest = client.server_info()[0].model_digest
            job = client.open_job("decoder_tuning", model_digest=digest, test_seed=b"decoder")
            for name, shares in split.items():
                job.upload_shares(name, shares)
            if not fits:
                with pytest.raises(ClusterError, match=f"RESOURCE_EXHAUSTED.*{keeps} bytes.*max_job_bytes"):
                    job.evaluate(params=params)
                assert all(s.batches_done == 0 for s in job.status().values())  # nothing ran
                continue
            job.evaluate(params=params)
            first = job.reveal_float("losses")
            job.evaluate(params=params)
            assert np.allclose(job.reveal_float("losses"), first, atol=2e-3)
            job.close()
        logits = _plaintext_logits(cfg, weights, secrets, params)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        expected = -(log_probs * secrets["train.y"][None]).sum(axis=-1).mean(axis=-1)
        assert np.abs(first - expected).max() <= TOL


def _plan(checkpoint, placement: str = "suffix", **changes):
    cfg, weights = load_llama_checkpoint(checkpoint)
    secrets, params = _secrets(cfg, weights, placement, "losses")
    shapes = {n: v.shape for n, v in secrets.items()}
    for name, shape in changes.pop("shapes", {}).items():
        if shape is None:
            shapes.pop(name)
        else:
            shapes[name] = shape
    model = SimpleNamespace(manifest={"config": cfg.model_dump()}, suite="2pc")
    return DecoderTuning().plan(shapes, DecoderTuningParams(**{**params, **changes}), model)


def test_plan_accepts_the_good_request_and_refuses_bad_ones(checkpoint):
    assert _plan(checkpoint) == {"losses": (P,)}
    assert _plan(checkpoint, "prefix", output="logits", shapes={"train.y": None}) == {"logits": (P, N, 2)}
    bad = [
        ({"shapes": {"template.x": None}}, "takes inputs"),
        ({"lengths": [6, 4]}, "lengths"),
        ({"lengths": [7, 4, 3]}, "lengths"),
        ({"label_words": [5, 10_000]}, "label_words"),
        ({"shapes": {"prompts": (P, 60, 32)}}, "positions"),
        ({"shapes": {"train.y": (N, 3)}}, "one-hot"),
        ({"shapes": {"template.x": (2, 31)}}, "template.x"),
    ]
    for changes, why in bad:
        with pytest.raises(PlanError, match=why):
            _plan(checkpoint, **changes)
    with pytest.raises(PlanError, match="two"):
        _plan(checkpoint, "prefix", lengths=[6, 1, 3])


def test_an_encoder_model_is_refused_by_name(checkpoint):
    cfg, _ = load_llama_checkpoint(checkpoint)
    model = SimpleNamespace(manifest={"config": {"arch": "bert"}}, suite="2pc")
    shapes = {"train.x": (N, T, cfg.hidden), "prompts": (P, L, cfg.hidden)}
    params = DecoderTuningParams(
        split="train", placement="prefix", output="logits", lengths=[6, 4, 3], label_words=WORDS
    )
    with pytest.raises(PlanError, match=r"LLaMA-family.*'bert'"):
        DecoderTuning().plan(shapes, params, model)
