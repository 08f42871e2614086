"""Secure Adam against torch.optim.Adam, and gradient prompt tuning / full fine-tuning steps against torch.

Adam's secure form puts eps inside the root (mpc_core/nn/grad/adam.py): against torch.optim.Adam it must
agree within the stated difference lr |m^| |1/sqrt(v^ + eps^2) - 1/(sqrt(v^) + eps)| (from torch's own
state) plus the fixed-point error, and within 1e-2 of the update where sqrt(v^) >> eps.  The tuning steps
are compared with torch autograd of the same model followed by the same Adam formula in torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from backward_reference import torch_loss
from helpers_models import hf_model
from test_backward import LOSS_SCALE, Case

from contract.manifest import load_party_shares
from mpc_core.nn.backend import PlainBackend, SecureBackend
from mpc_core.nn.grad.adam import ADAM_CHUNK, Adam, AdamConfig
from mpc_core.nn.grad.tuning import FullFineTuning, PromptTuning
from mpc_core.nn.weights import _canonical_name, _is_transposed
from mpc_core.runtime import run_parties
from mpc_core.tensor import SharedTensor

SHAPES = {"a": (4, 5), "b": (7,)}
STEPS = 3


def _gradients(rng, low: float):
    return [
        {k: rng.choice([-1.0, 1.0], size=s) * rng.uniform(low, 1.0, size=s) for k, s in SHAPES.items()}
        for _ in range(STEPS)
    ]


def _torch_adam(theta, grads, cfg: AdamConfig):
    """Parameters after each torch.optim.Adam step, and the bound of eps inside vs outside the root."""
    params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in theta.items()}
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    after, bounds = [], []
    for t, g in enumerate(grads, start=1):
        for k in SHAPES:
            params[k].grad = torch.tensor(g[k])
        opt.step()
        after.append({k: params[k].detach().numpy().copy() for k in SHAPES})
        bound = {}
        for k in SHAPES:
            state = opt.state[params[k]]
            m = state["exp_avg"].numpy() / (1 - cfg.beta1**t)
            v = state["exp_avg_sq"].numpy() / (1 - cfg.beta2**t)
            step_gap = np.abs(1 / np.sqrt(v + cfg.eps**2) - 1 / (np.sqrt(v) + cfg.eps))
            prev = bounds[-1][k] if bounds else 0.0
            bound[k] = prev + cfg.lr * np.abs(m) * step_gap
        bounds.append(bound)
    return after, bounds


def _run_adam(B, theta, grads, cfg, scale, chunk=ADAM_CHUNK):
    adam = Adam(B, cfg, scale, chunk=chunk)
    params, out = dict(theta), []
    for g in grads:
        params = adam.step(params, {k: v * scale for k, v in g.items()})
        out.append(params)
    return out


def test_plain_adam_is_torch_adam_within_the_eps_placement_bound():
    rng = np.random.default_rng(0)
    theta = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = _gradients(rng, low=1e-4)  # some elements with |g| near eps: there the forms differ most
    cfg = AdamConfig(lr=1e-2, eps=1e-3, grad_max=1.0)
    ref, bounds = _torch_adam(theta, grads, cfg)
    got = _run_adam(PlainBackend({}), theta, grads, cfg, 64.0)
    gaps = []
    for t in range(STEPS):
        for k in SHAPES:
            err = np.abs(got[t][k] - ref[t][k])
            assert np.all(err <= bounds[t][k] + 1e-12), (t, k)
            gaps.append(err.max())
    assert max(gaps) > 1e-4  # the placement of eps does matter for small gradients


def test_plain_adam_in_slices_equals_adam_at_once():
    """The element-wise step on slices of 5 of the 27 flattened elements (6 slices, the last of 2, one
    slice across both tensors) is the same float64 computation as on the whole vector."""
    rng = np.random.default_rng(2)
    theta = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = _gradients(rng, low=1e-3)
    cfg = AdamConfig(lr=1e-2, eps=1e-3, grad_max=1.0)
    whole = _run_adam(PlainBackend({}), theta, grads, cfg, 64.0)
    sliced = _run_adam(PlainBackend({}), theta, grads, cfg, 64.0, chunk=5)
    for t in range(STEPS):
        for k in SHAPES:
            np.testing.assert_allclose(sliced[t][k], whole[t][k], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="at least one element"):
        Adam(PlainBackend({}), cfg, chunk=0)


@pytest.mark.parametrize("chunk", [ADAM_CHUNK, 5])
@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_secure_adam_follows_torch_adam(suite: str, chunk: int):
    """Within the eps-placement bound plus the stated precision per step; and within 1e-2 of the update
    where sqrt(v^) >= 200 eps; the same whether the step runs on the whole vector or on slices of 5."""
    rng = np.random.default_rng(1)
    theta = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = _gradients(rng, low=0.2)
    cfg = AdamConfig(lr=1e-2, eps=1e-3, grad_max=1.0)
    scale = LOSS_SCALE
    ref, placement = _torch_adam(theta, grads, cfg)
    plain = _run_adam(PlainBackend({}), theta, grads, cfg, scale)
    names = sorted(SHAPES)

    def program(ctx, *xs):
        start = dict(zip(names, xs[:2], strict=True))
        steps = [dict(zip(names, xs[2 + 2 * i : 4 + 2 * i], strict=True)) for i in range(STEPS)]
        adam = Adam(SecureBackend(ctx, {}), cfg, scale, chunk=chunk)
        params, out = start, []
        for g in steps:
            params = adam.step(params, g)
            assert all(isinstance(v, SharedTensor) for v in params.values())
            out.append({k: v.reveal() for k, v in params.items()})
        return out, adam.precision

    inputs = [theta[k] for k in names] + [g[k] * scale for g in grads for k in names]
    got, precision = run_parties(suite, program, *inputs)[0]
    assert precision <= 3e-3
    ulp = 2.0**-16
    for t in range(STEPS):
        fixed_point = (t + 1) * ((precision + 1.6e-5) * cfg.lr + 4 * ulp)
        for k in SHAPES:
            assert np.abs(got[t][k] - plain[t][k]).max() <= fixed_point, (t, k)
            assert np.all(np.abs(got[t][k] - ref[t][k]) <= placement[t][k] + fixed_point), (t, k)
            moved = np.abs(ref[t][k] - theta[k]).max()
            assert np.abs(got[t][k] - ref[t][k]).max() <= 1e-2 * moved, (t, k)


def test_adam_refuses_an_unresolvable_eps_and_other_tensors():
    with pytest.raises(ValueError, match="raise eps"):
        Adam(PlainBackend({}), AdamConfig(lr=1e-3, eps=1e-8), loss_scale=256.0)
    with pytest.raises(ValueError, match=r"0\.011"):  # grad_max / eps = 10^4: just past the limit
        Adam(PlainBackend({}), AdamConfig(lr=1e-3, eps=1e-4), loss_scale=1.0)
    assert Adam(PlainBackend({}), AdamConfig(lr=1e-3), 1.0).precision == pytest.approx(2.4e-3, abs=1e-4)
    adam = Adam(PlainBackend({}), AdamConfig(lr=1e-3, eps=1e-2), loss_scale=256.0)
    p = {"a": np.zeros(3)}
    adam.step(p, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="other tensors"):
        adam.step({"b": np.zeros(3)}, {"b": np.ones(3)})
    with pytest.raises(ValueError, match="shape"):
        adam.step(p, {"a": np.ones(4)})
    assert adam.t == 1  # refused steps changed nothing


# ---------------------------------------------------------------------------------------------- tuning
PROMPT_ADAM = AdamConfig(lr=0.05, eps=1e-2, grad_max=1.0)
SFT_ADAM = AdamConfig(lr=1e-2, eps=1e-2, grad_max=2.0)
TUNING_STEPS = 2


def _torch_adam_inside(params, cfg: AdamConfig, steps, loss_fn):
    """Adam with eps inside the root, in torch float64 on autograd gradients: the same maths as ours."""
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    losses = []
    for t in range(1, steps + 1):
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for i, p in enumerate(params):
                m[i] = cfg.beta1 * m[i] + (1 - cfg.beta1) * p.grad
                v[i] = cfg.beta2 * v[i] + (1 - cfg.beta2) * p.grad**2
                mhat, vhat = m[i] / (1 - cfg.beta1**t), v[i] / (1 - cfg.beta2**t)
                p -= cfg.lr * mhat / torch.sqrt(vhat + cfg.eps**2)
    return losses


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    return Case(tmp_path_factory.mktemp("tuning"), "bert")


def _torch_prompt_tuning(case: Case):
    model = hf_model(case.folder, mlm=False)
    for p in model.parameters():
        p.requires_grad_(False)
    prompt = torch.tensor(case.prompt.copy(), requires_grad=True)

    def loss_fn():
        return torch_loss(
            model, case.examples, prompt, case.mask, case.head.anchors, case.head.scale, case.labels
        )

    losses = _torch_adam_inside([prompt], PROMPT_ADAM, TUNING_STEPS, loss_fn)
    return losses, prompt.detach().numpy()


def test_plain_prompt_tuning_equals_torch(case: Case):
    ref_losses, ref_prompt = _torch_prompt_tuning(case)
    tuner = PromptTuning(
        PlainBackend(case.weights), case.cfg, case.head, case.prompt, PROMPT_ADAM, LOSS_SCALE
    )
    losses = [tuner.step(case.examples, case.onehot, case.mask)[0] for _ in range(TUNING_STEPS)]
    np.testing.assert_allclose(losses, ref_losses, atol=1e-12)
    np.testing.assert_allclose(tuner.prompt, ref_prompt, atol=1e-10)


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_secure_prompt_tuning_follows_torch(case: Case, suite: str):
    ref_losses, ref_prompt = _torch_prompt_tuning(case)
    folder = case.share(suite)

    def program(ctx, e, p, y):
        weights = load_party_shares(ctx, folder)
        tuner = PromptTuning(SecureBackend(ctx, weights), case.cfg, case.head, p, PROMPT_ADAM, LOSS_SCALE)
        losses = [tuner.step(e, y, case.mask).reveal()[0] for _ in range(TUNING_STEPS)]
        assert isinstance(tuner.prompt, SharedTensor)
        return losses, tuner.prompt.reveal()

    losses, prompt = run_parties(suite, program, case.examples, case.prompt, case.onehot)[0]
    np.testing.assert_allclose(losses, ref_losses, atol=1e-2)
    moved = np.abs(ref_prompt - case.prompt).max()
    assert moved > 0.5 * PROMPT_ADAM.lr
    assert np.abs(prompt - ref_prompt).max() <= 1e-2 * moved


def _torch_sft(case: Case):
    model = hf_model(case.folder, mlm=False)
    named = [(n, p) for n, p in model.named_parameters() if (_canonical_name(n) or "").startswith("layer.")]
    for _, p in model.named_parameters():
        p.requires_grad_(any(p is q for _, q in named))

    def loss_fn():
        return torch_loss(
            model, case.examples, None, case.mask, case.head.anchors, case.head.scale, case.labels
        )

    losses = _torch_adam_inside([p for _, p in named], SFT_ADAM, TUNING_STEPS, loss_fn)
    weights = {}
    for n, p in named:
        name = _canonical_name(n)
        w = p.detach().numpy()
        weights[name] = w.T if _is_transposed(name) else w
    return losses, weights


def _assert_weights_follow(got, ref, start, rtol):
    assert set(got) >= set(ref)
    for name, value in ref.items():
        moved = np.abs(value - start[name]).max()
        assert np.abs(got[name] - value).max() <= rtol * max(moved, SFT_ADAM.lr), name


def test_plain_full_fine_tuning_equals_torch(case: Case):
    ref_losses, ref_weights = _torch_sft(case)
    sft = FullFineTuning(PlainBackend(case.weights), case.cfg, case.head, SFT_ADAM, LOSS_SCALE)
    losses = [sft.step(case.examples, case.onehot, case.mask)[0] for _ in range(TUNING_STEPS)]
    np.testing.assert_allclose(losses, ref_losses, atol=1e-12)
    _assert_weights_follow(dict(sft.weights), ref_weights, case.weights, rtol=1e-8)
    assert not np.array_equal(sft.weights["layer.0.ffn.in.weight"], case.weights["layer.0.ffn.in.weight"])


@pytest.mark.parametrize("suite", [pytest.param("2pc", marks=pytest.mark.slow), "3pc"])  # 2pc: 18 s
def test_secure_full_fine_tuning_follows_torch(case: Case, suite: str):
    """Two secure SFT steps: the second step's loss is computed with the updated shared weights (fresh
    fixed-operand keys), and every updated weight stays a share."""
    ref_losses, ref_weights = _torch_sft(case)
    folder = case.share(suite)

    def program(ctx, e, y):
        sft = FullFineTuning(
            SecureBackend(ctx, load_party_shares(ctx, folder)), case.cfg, case.head, SFT_ADAM, LOSS_SCALE
        )
        losses = [sft.step(e, y, case.mask).reveal()[0] for _ in range(TUNING_STEPS)]
        assert all(isinstance(v, SharedTensor) for v in sft.weights.values())
        return losses, {k: v.reveal() for k, v in sft.weights.items() if k in ref_weights}

    losses, weights = run_parties(suite, program, case.examples, case.onehot)[0]
    np.testing.assert_allclose(losses, ref_losses, atol=1e-2)
    _assert_weights_follow(weights, ref_weights, case.weights, rtol=1e-2)
