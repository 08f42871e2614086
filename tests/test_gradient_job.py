"""The ``gradient_tuning`` program (secure SFT, secure gradient prompt tuning) on an in-process cluster.

Each participant runs its own per-job program instance (``for_job``, its own state directory) as a
server does: every batch is planned on every participant first, then run over the in-process transport.
Three secure Adam steps of each method are compared with the float64 plaintext steps of the same
computation (:mod:`mpc_core.nn.grad.tuning` on ``PlainBackend``); a job resumed from the checkpoint of
step 2 must give the uninterrupted run's step-3 loss; bad requests and missing checkpoints are refused
in the plan, before any state changes.

Tolerance: LOSS_ATOL = 1e-3 absolute on each step's loss (the engine's secure tuning steps are within
1e-2 of torch after two steps, tests/test_backward_adam.py; the third step adds one more update's
fixed-point error).  Measured here: about 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_models import make_tiny_model, random_batch

from contract.embedding import PublicEmbeddings
from model_owner.share import share_model
from mpc_core.nn.backend import PlainBackend
from mpc_core.nn.grad.adam import AdamConfig
from mpc_core.nn.grad.tuning import FullFineTuning, PromptTuning
from mpc_core.nn.heads import SimilarityHead, similarity_anchors
from mpc_core.nn.weights import load_checkpoint
from mpc_core.prg import PRG
from mpc_core.ring import RING_DTYPE, FixedPoint
from mpc_core.runtime import run_threads
from mpc_core.suites import suite_class
from proto.contracts import GradientParams, padding_lengths
from server.execute import run_program, start_context
from server.model_store import load_model
from server.programs import get_program
from server.programs.base import PlanError

pytestmark = pytest.mark.timeout(600)

FP = FixedPoint()
N, T, L, C, TA = 3, 10, 2, 2, 5
STEPS = 3
LOSS_ATOL = 1e-3
ADAM = {"prompt": dict(lr=0.5, eps=1e-2, grad_max=1.0), "sft": dict(lr=0.05, eps=1e-2, grad_max=2.0)}


class Case:
    """A tiny one-layer BERT encoder shared for one suite, a batch of 3 examples and 2 anchors."""

    def __init__(self, root: Path, suite: str) -> None:
        self.suite = suite
        self.folder = make_tiny_model(root / "ckpt", "bert", mlm=False, seed=3, num_hidden_layers=1)
        self.cfg, self.weights = load_checkpoint(self.folder)
        share_model(self.folder, suite, root / "model")
        self.models = [
            load_model(
                root / "model",
                participant=p,
                holds_shares=p in suite_class(suite).compute_parties,
                suite=suite,
                frac_bits=16,
            )
            for p in range(3)
        ]
        rng = np.random.default_rng(4)
        embed = PublicEmbeddings.from_tensors(self.cfg, self.weights)
        ids, self.mask = random_batch(rng, N, T, self.cfg.vocab, 0, 2, 3, min_len=L + 3)
        anchor_ids, self.anchor_mask = random_batch(rng, C, TA, self.cfg.vocab, 0, 2, 3, min_len=3)
        self.secrets = {
            "train.x": embed(ids),
            "train.y": np.eye(C)[[0, 1, 1]],
            "anchors.x": embed(anchor_ids),
            "prompt": rng.normal(scale=0.3, size=(1, L, self.cfg.hidden)),
        }
        self.root = root

    def params(self, method: str, **changes) -> dict:
        params = {
            "method": method,
            "lengths": padding_lengths(self.mask),
            "anchor_lengths": padding_lengths(self.anchor_mask),
            "scale": 5.0,
            "loss_scale": 256.0,
            **ADAM[method],
        }
        if method == "prompt":
            params["pool_exclude"] = list(range(1, 1 + L))
        return {**params, **changes}

    def plaintext_losses(self, method: str, steps: int = STEPS) -> list[float]:
        """The float64 steps of the same computation (anchors encoded once in the clear)."""
        params = GradientParams(**self.params(method))
        anchors = similarity_anchors(self.weights, self.cfg, self.secrets["anchors.x"], self.anchor_mask)
        head = SimilarityHead(anchors, scale=params.scale)
        adam = AdamConfig(**ADAM[method])
        B = PlainBackend(self.weights)
        x, y = self.secrets["train.x"], self.secrets["train.y"]
        if method == "prompt":
            tuner = PromptTuning(B, self.cfg, head, self.secrets["prompt"], adam, params.loss_scale)
            pool = self.mask.copy()
            pool[:, params.pool_exclude] = 0
            return [float(tuner.step(x, y, self.mask, pool_mask=pool)[0]) for _ in range(steps)]
        tuner = FullFineTuning(B, self.cfg, head, adam, params.loss_scale)
        return [float(tuner.step(x, y, self.mask)[0]) for _ in range(steps)]


Batch = tuple[list[str], dict | list[dict]]


class InProcessJob:
    """One job on every participant of an in-process cluster, as servers hold it: a program instance
    (``for_job``, its own state directory), a context and a state each, for the job's lifetime."""

    def __init__(self, case: Case, job_id: str, state_dirs: list[Path | None] | None = None) -> None:
        self.case = case
        self.job_id = job_id
        dirs = state_dirs or [case.root / "state" / f"p{p}" for p in range(3)]
        self.programs = [get_program("gradient_tuning").for_job(job_id, d) for d in dirs]

    def plan(self, names: list[str], params: dict, shapes: dict | None = None) -> list[dict]:
        """Every participant's plan (raises the first PlanError)."""
        shapes = shapes or {n: self.case.secrets[n].shape for n in names}
        return [
            prog.plan(shapes, prog.parse_params(json.dumps(params)), self.case.models[i])
            for i, prog in enumerate(self.programs)
        ]

    def run(self, batches: list[Batch]) -> list[dict[str, np.ndarray]]:
        """Plan each batch on every participant, then run it; returns each batch's revealed outputs."""
        suite = self.case.suite
        cls = suite_class(suite)
        prg = PRG(b"gradient-jobtest")
        split = [{n: cls.split(FP.encode(self.case.secrets[n]), prg) for n in names} for names, _ in batches]

        def body(p: int, transport):
            ctx = start_context(p, suite, transport, 16)
            model = self.case.models[p].wrap(ctx)
            program, state, out = self.programs[p], {}, []
            for (names, params), shares in zip(batches, split, strict=True):
                params = params[p] if isinstance(params, list) else params  # per participant: a bad client
                shapes = {n: self.case.secrets[n].shape for n in names}
                parsed = program.parse_params(json.dumps(params))
                planned = program.plan(shapes, parsed, self.case.models[p])
                own = None if ctx.is_dealer else {n: s[p] for n, s in shares.items()}
                produced = run_program(ctx, program, parsed, own, shapes, model, state)
                assert {n: t.shape for n, t in produced.items()} == planned
                out.append(
                    {
                        n: (None if ctx.is_dealer else np.asarray(t.data, RING_DTYPE), t.scale)
                        for n, t in produced.items()
                    }
                )
            return out

        results = run_threads(body, cls.participants, 600.0)
        parties = cls.compute_parties
        revealed = []
        for b in range(len(batches)):
            revealed.append(
                {
                    name: cls.combine([results[p][b][name][0] for p in parties]).view(np.int64)
                    / float(1 << scale)
                    for name, (_, scale) in results[0][b].items()
                }
            )
        return revealed


def first_inputs(method: str) -> list[str]:
    return ["train.x", "train.y", "anchors.x"] + (["prompt"] if method == "prompt" else [])


LATER = ["train.x", "train.y"]


@pytest.fixture(scope="module", params=["2pc", "3pc"])
def case(request, tmp_path_factory) -> Case:
    return Case(tmp_path_factory.mktemp(f"gradient-{request.param}"), request.param)


@pytest.mark.parametrize("method", ["prompt", "sft"])
def test_secure_steps_follow_plaintext_and_resume_after_step_2(case: Case, method: str):
    """Three secure steps equal the float64 steps within LOSS_ATOL; the checkpoint written after step 2
    resumes in a new job whose step 3 gives the uninterrupted run's step-3 loss."""
    expected = case.plaintext_losses(method)
    params = case.params(method)
    job = InProcessJob(case, f"{method}-a")
    ckpt = f"{case.suite}-{method}"
    out = job.run(
        [
            (first_inputs(method), params),
            (LATER, {**params, "checkpoint": ckpt}),
            (LATER, params),
        ]
    )
    losses = [float(o["loss"][0]) for o in out]
    print(f"{case.suite} {method}: secure {losses} plaintext {expected}")
    np.testing.assert_allclose(losses, expected, atol=LOSS_ATOL)
    assert expected[0] - expected[2] > 3 * LOSS_ATOL  # the steps train: the comparison is not of constants
    assert [p.progress.step for p in job.programs] == [3, 3, 3]
    for p in range(3):
        assert (case.root / "state" / f"p{p}" / f"{ckpt}.ckpt.npz").is_file()

    resumed = InProcessJob(case, f"{method}-b")
    resume = {"checkpoint": ckpt, "step": 2, "job": f"{method}-a"}
    again = resumed.run([(LATER, {**params, "resume": resume})])
    print(f"{case.suite} {method}: resumed step 3 {again[0]['loss'][0]} uninterrupted {losses[2]}")
    assert abs(float(again[0]["loss"][0]) - losses[2]) <= LOSS_ATOL
    assert abs(float(again[0]["loss"][0]) - expected[2]) <= LOSS_ATOL
    assert [p.progress.step for p in resumed.programs] == [3, 3, 3]


def _refused(job: InProcessJob, names: list[str], params: dict, match: str, shapes: dict | None = None):
    before = [(p.progress.step, p.progress.started, p.progress.config_digest) for p in job.programs]
    with pytest.raises(PlanError, match=match):
        job.plan(names, params, shapes)
    assert [(p.progress.step, p.progress.started, p.progress.config_digest) for p in job.programs] == before


def test_bad_requests_are_refused_in_the_plan_without_state_change(case: Case):
    """Malformed parameters and wrong shapes are refused by every participant's plan, and the job then
    goes on as if they had never been sent."""
    params = case.params("prompt")
    job = InProcessJob(case, "refusals")
    first = first_inputs("prompt")
    h = case.cfg.hidden
    shapes = {n: case.secrets[n].shape for n in first}
    for changes, match in [
        ({"method": "adamw"}, "invalid parameters"),
        ({"lr": 0.0}, "invalid parameters"),
        ({"lr": 2.0}, "invalid parameters"),
        ({"beta1": 1.0}, "invalid parameters"),
        ({"eps": 1e-5}, "raise eps"),
        ({"loss_scale": 300.0}, "power of two"),
        ({"loss": "hinge"}, "invalid parameters"),
        ({"attention": "rfa"}, "invalid parameters"),
        ({"checkpoint": "../escape"}, "invalid parameters"),
        ({"lengths": [T] * (N - 1)}, "lengths"),
        ({"anchor_lengths": None}, "anchor_lengths"),
        ({"pool_exclude": [T]}, "distinct positions"),
        ({"method": "sft", "output_prompt": True}, "output_prompt"),
    ]:
        p = {**params, **changes}
        with pytest.raises(PlanError, match=match):
            for prog in job.programs:
                prog.plan(shapes, prog.parse_params(json.dumps(p)), case.models[0])
    for shape_changes, match in [
        ({"prompt": (2, L, h)}, "prompt must be"),
        ({"prompt": (1, T, h)}, "do not fit"),
        ({"train.x": (N, T, h + 1)}, "train.x must be"),
        ({"train.y": (N, C + 1)}, "one-hot"),
        ({"anchors.x": (1, TA, h)}, "two anchors"),
    ]:
        _refused(job, first, params, match, {**shapes, **shape_changes})
    _refused(job, LATER, params, "fresh job's first batch")  # no anchors, no prompt
    assert not (case.root / "state").exists() or not list((case.root / "state").rglob("refus*"))

    out = job.run([(first, {**params, "checkpoint": "refusals"}), (LATER, params)])  # still a fresh job
    assert [p.progress.step for p in job.programs] == [2, 2, 2]
    assert out[1]["loss"][0] < out[0]["loss"][0]
    for changes, match in [
        ({"lr": 0.4}, "fixed for a job"),
        ({"scale": 6.0}, "fixed for a job"),
        ({"resume": {"checkpoint": "refusals", "step": 1, "job": "refusals"}}, "first batch"),
    ]:
        _refused(job, LATER, {**params, **changes}, match)
    _refused(job, first, params, "a resumed or later batch")  # anchors and prompt only once


def test_a_resume_is_refused_unless_every_participant_holds_that_checkpoint(case: Case, tmp_path):
    """Each participant checks its own file: missing, another step, another job, other settings, corrupt."""
    params = case.params("prompt")
    dirs = [tmp_path / f"p{p}" for p in range(3)]
    job = InProcessJob(case, "writer", dirs)
    out = job.run([(first_inputs("prompt"), {**params, "checkpoint": "ck", "output_prompt": True})])
    assert out[0]["prompt"].shape == (1, L, case.cfg.hidden)
    assert not np.allclose(out[0]["prompt"], case.secrets["prompt"], atol=0.1)  # the step moved it
    resume = {"checkpoint": "ck", "step": 1, "job": "writer"}
    reader = InProcessJob(case, "reader", dirs)
    assert reader.plan(LATER, {**params, "resume": resume}) == [{"loss": (1,)}] * 3

    for changes, match in [
        ({"resume": {**resume, "step": 2}}, "holds step 1 of job 'writer', not step 2"),
        ({"resume": {**resume, "job": "other"}}, "not step 1 of job 'other'"),
        ({"resume": {**resume, "checkpoint": "nothing"}}, "holds no checkpoint 'nothing'"),
        ({"resume": resume, "lr": 0.25}, "another method, model or Adam settings"),
        ({"resume": resume, "method": "sft"}, "another method"),
    ]:
        _refused(reader, LATER, {**params, **changes}, match)
    nostore = InProcessJob(case, "nostore", [None, None, None])
    _refused(nostore, LATER, {**params, "resume": resume}, "no state directory")

    (dirs[1] / "ck.ckpt.npz").rename(dirs[1] / "moved.npz")
    plans = []
    for i, prog in enumerate(reader.programs):
        try:
            prog.plan(
                {n: case.secrets[n].shape for n in LATER},
                prog.parse_params(json.dumps({**params, "resume": resume})),
                case.models[i],
            )
            plans.append("ok")
        except PlanError as exc:
            plans.append(str(exc))
    assert plans[0] == plans[2] == "ok"
    assert "holds no checkpoint 'ck'" in plans[1]
    (dirs[1] / "ck.ckpt.npz").write_bytes(b"not a checkpoint")
    _refused(reader, LATER, {**params, "resume": resume}, "cannot read checkpoint 'ck'")
    assert [p.progress.step for p in reader.programs] == [0, 0, 0]
    assert sorted(f.name for f in dirs[0].iterdir()) == ["ck.ckpt.npz"]  # no temporary file left behind


def test_participants_resuming_different_checkpoints_abort_at_the_first_message(case: Case, tmp_path):
    """A client that names a different (each locally valid) checkpoint to one participant: every plan
    accepts, and the digest exchange at the start of the resume stops the job before any step."""
    from mpc_core.transport.base import ProtocolError

    params = case.params("prompt")
    dirs = [tmp_path / f"p{p}" for p in range(3)]
    InProcessJob(case, "first", dirs).run([(first_inputs("prompt"), {**params, "checkpoint": "ck"})])
    InProcessJob(case, "second", dirs).run([(first_inputs("prompt"), {**params, "checkpoint": "ck2"})])
    one = {**params, "resume": {"checkpoint": "ck", "step": 1, "job": "first"}}
    two = {**params, "resume": {"checkpoint": "ck2", "step": 1, "job": "second"}}
    reader = InProcessJob(case, "mixed", dirs)
    with pytest.raises(ProtocolError, match="different checkpoints"):
        reader.run([(LATER, [one, two, one])])
    assert [p.progress.step for p in reader.programs] == [0, 0, 0]
