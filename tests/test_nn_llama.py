"""LLaMA-family decoders in plaintext: the float64 backend against Hugging Face's own LlamaForCausalLM, the
checkpoint readers (Hugging Face folder, GGUF through transformers), sharing, and refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers_llama import hf_causal_lm, make_tiny_llama

from contract.manifest import ShareManifest
from model_owner.checkpoints import read_checkpoint
from model_owner.cli import main as share_cli
from model_owner.share import reconstruct, share_model
from mpc_core.nn.config import UnsupportedModelError
from mpc_core.nn.decoder import (
    causal_keep,
    decode,
    embed_tokens,
    final_norm,
    positions_from_mask,
)
from mpc_core.nn.decoder_backend import PlainDecoderBackend
from mpc_core.nn.decoder_cache import (
    candidate_losses,
    extend,
    full_sequences,
    prefill,
    suffix_tokens,
)
from mpc_core.nn.decoder_head import NextTokenHead
from mpc_core.nn.llama_config import DecoderConfig
from mpc_core.nn.llama_weights import load_llama_checkpoint
from mpc_core.nn.loss import cross_entropy
from mpc_core.nn.weights import CheckpointError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

TOL = 1e-4
WORDS = [5, 9, 30]


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny(request, tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("llama"), seed=1, tie=request.param)
    cfg, weights = load_llama_checkpoint(folder)
    return folder, cfg, weights


def batch(rng: np.random.Generator, cfg: DecoderConfig, n: int = 4, t: int = 11):
    """Token ids [n, t] with right padding of several lengths, and the 0/1 mask."""
    ids = rng.integers(3, cfg.vocab, size=(n, t))
    mask = np.ones((n, t), dtype=np.int64)
    for i, length in enumerate([t, t - 3, 4, t - 1][:n]):
        mask[i, length:] = 0
        ids[i, length:] = cfg.pad_token_id or 0
    return ids, mask


def test_config_records_the_architecture(tiny):
    _, cfg, weights = tiny
    shape = (cfg.arch, cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.group)
    assert shape == ("llama", 32, 4, 2, 8, 2)
    assert ("head.weight" in weights) == (not cfg.tie_word_embeddings)
    assert weights["layer.0.attn.k.weight"].shape == (32, 16)  # [in, out], 2 kv heads of 8


def test_plain_backend_matches_hugging_face(tiny):
    folder, cfg, weights = tiny
    ids, mask = batch(np.random.default_rng(2), cfg)
    B = PlainDecoderBackend(weights)
    residual = decode(B, cfg, embed_tokens(weights["emb.word"], ids), mask)
    hidden = final_norm(B, cfg, residual)
    with torch.no_grad():
        out = hf_causal_lm(folder)(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions_from_mask(mask)),
            output_hidden_states=True,
        )
    real = mask.astype(bool)
    ref = out.hidden_states[-1].numpy()
    assert np.abs(ref).max() > 0.5
    assert np.abs(hidden - ref)[real].max() <= TOL
    # the head: next-token logits of the verbalizer words at each sequence's last real token
    answer = mask.sum(axis=1) - 1
    head = (
        NextTokenHead.from_embeddings(WORDS, weights["emb.word"])
        if cfg.tie_word_embeddings
        else NextTokenHead(WORDS)
    )
    logits = head.logits(B, cfg, residual, answer)
    expected = out.logits.numpy()[np.arange(len(ids)), answer][:, WORDS]
    assert logits.shape == (len(ids), len(WORDS))
    assert np.abs(expected).max() > 0.1
    assert np.abs(logits - expected).max() <= TOL


def test_causal_mask_and_positions():
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 1, 2, 2], [0, 0, 1, 2]]
    keep = causal_keep(mask)[:, 0]
    assert keep.shape == (2, 4, 4)
    assert (np.triu(keep[0], 1) == 0).all()  # never a later key
    assert keep[0, 3].tolist() == [1, 1, 1, 1]  # a padding query sees itself (no empty softmax row)
    assert keep[1, 2].tolist() == [0, 1, 1, 0]  # a padding key is never seen by a real query
    assert (keep.sum(axis=-1) >= 1).all()


def test_later_tokens_do_not_change_earlier_states(tiny):
    """Causality of the plaintext computation itself: the prefix's states ignore what follows."""
    _, cfg, weights = tiny
    ids, _ = batch(np.random.default_rng(3), cfg, n=1)
    B = PlainDecoderBackend(weights)
    other = ids.copy()
    other[0, 6:] = (ids[0, 6:] + 7) % cfg.vocab
    a, b = (decode(B, cfg, embed_tokens(weights["emb.word"], x), np.ones_like(x)) for x in (ids, other))
    assert np.abs(a[:, :6] - b[:, :6]).max() <= 1e-12
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_share_model_shares_a_llama_folder(tiny, suite, tmp_path):
    folder, cfg, weights = tiny
    manifest = share_model(folder, suite, tmp_path / "out")
    assert manifest.arch == "llama" and manifest.config == cfg
    reread = ShareManifest.read(tmp_path / "out")
    assert isinstance(reread.config, DecoderConfig) and reread.config == cfg
    assert "emb.word" not in manifest.tensors  # the token embedding is public
    assert len(manifest.party_files) == {"2pc": 2, "3pc": 3}[suite]
    back = reconstruct(tmp_path / "out")
    assert set(back) == {k for k in weights if k != "emb.word"}
    assert max(np.abs(back[k] - weights[k]).max() for k in back) <= 2.0**-16


def _edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    hf = json.loads(path.read_text())
    hf.update(changes)
    path.write_text(json.dumps(hf))


def test_unsupported_architecture_is_refused_by_name(tmp_path, capsys):
    folder = make_tiny_llama(tmp_path / "ckpt")
    _edit_config(folder, model_type="gpt_neox")
    with pytest.raises(UnsupportedModelError, match=r"'gpt_neox'.*bert, roberta, llama"):
        read_checkpoint(folder)
    assert share_cli(["--model", str(folder), "--suite", "2pc", "--out", str(tmp_path / "out")]) == 2
    assert "unsupported architecture 'gpt_neox'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_act": "gelu"}, "activation 'gelu'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "'llama3'"),
    ],
)
def test_unsupported_llama_variants_are_refused(tmp_path, changes, message):
    folder = make_tiny_llama(tmp_path / "ckpt")
    _edit_config(folder, **changes)
    with pytest.raises(UnsupportedModelError, match=message):
        share_model(folder, "2pc", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_incomplete_llama_checkpoint_is_refused(tmp_path):
    folder = make_tiny_llama(tmp_path / "ckpt")
    _edit_config(folder, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="incomplete"):
        load_llama_checkpoint(folder)


def test_head_refuses_bad_positions(tiny):
    _, cfg, weights = tiny
    ids, mask = batch(np.random.default_rng(4), cfg, n=2)
    B = PlainDecoderBackend(weights)
    residual = decode(B, cfg, embed_tokens(weights["emb.word"], ids), mask)
    head = NextTokenHead.from_embeddings(WORDS, weights["emb.word"])
    with pytest.raises(ValueError, match="one answer position per sequence"):
        head.logits(B, cfg, residual, np.array([1]))
    with pytest.raises(ValueError, match="answer positions"):
        head.logits(B, cfg, residual, np.array([1, ids.shape[1]]))
    with pytest.raises(ValueError, match="verbalizer word ids"):
        NextTokenHead.from_embeddings([cfg.vocab], weights["emb.word"])


def test_too_long_input_is_refused(tiny):
    _, cfg, weights = tiny
    t = cfg.max_positions + 1
    x = np.zeros((1, t, cfg.hidden))
    with pytest.raises(ValueError, match="sequence too long"):
        decode(PlainDecoderBackend(weights), cfg, x, np.ones((1, t), dtype=np.int64))


@pytest.mark.slow
def test_smollm2_gguf_plain_matches_hugging_face(tmp_path):
    """The real SmolLM2-135M (GGUF, dequantised by transformers) through our loader: <= 1e-4 of HF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpc_core.nn.llama_weights import gguf_to_folder, smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    folder = gguf_to_folder(gguf, tmp_path / "smollm2")
    cfg, weights = read_checkpoint(folder)
    assert (cfg.arch, cfg.layers, cfg.hidden, cfg.heads, cfg.kv_heads, cfg.vocab) == (
        "llama",
        30,
        576,
        9,
        3,
        49152,
    )
    assert cfg.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = np.array([tok("it was a great movie . Sentiment:")["input_ids"]])
    mask = np.ones_like(ids)
    B = PlainDecoderBackend(weights)
    residual = decode(B, cfg, embed_tokens(weights["emb.word"], ids), mask)
    words = [tok(" positive")["input_ids"][0], tok(" negative")["input_ids"][0]]
    logits = NextTokenHead.from_embeddings(words, weights["emb.word"]).logits(
        B, cfg, residual, np.array([ids.shape[1] - 1])
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float64, attn_implementation="eager"
    )
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), output_hidden_states=True)
    assert np.abs(final_norm(B, cfg, residual) - out.hidden_states[-1].numpy()).max() <= TOL
    assert np.abs(logits - out.logits.numpy()[:, -1, words]).max() <= TOL


@pytest.mark.parametrize("left_padding", [False, True])
def test_suffix_cache_equals_recomputing_every_sequence(tiny, left_padding):
    """Keys and values of the examples computed once, then P candidates' prompt + template tokens attend
    to them: the same residual stream as each full sequence run alone (plaintext, to rounding)."""
    _, cfg, weights = tiny
    rng = np.random.default_rng(5)
    ids = rng.integers(3, cfg.vocab, size=(3, 7))
    mask = np.ones((3, 7), dtype=np.int64)
    mask[1, 5:] = 0
    if left_padding:
        mask[2, :3] = 0
    B = PlainDecoderBackend(weights)
    examples = embed_tokens(weights["emb.word"], ids)
    new = suffix_tokens(
        B, rng.normal(scale=0.3, size=(2, 3, cfg.hidden)), embed_tokens(weights["emb.word"], [7, 8])
    )
    out = extend(B, cfg, prefill(B, cfg, examples, mask), new)
    ref = np.stack(
        [
            decode(B, cfg, s[None], np.ones((1, len(s)), dtype=np.int64))[0, -new.shape[1] :]
            for s in full_sequences(examples, mask, new)
        ]
    )
    assert out.shape == ref.shape == (6, 5, cfg.hidden)
    assert np.abs(out - ref).max() <= 1e-10


def test_suffix_cache_refuses_too_long_and_bad_templates(tiny):
    _, cfg, weights = tiny
    B = PlainDecoderBackend(weights)
    mask = np.ones((1, cfg.max_positions - 2), dtype=np.int64)
    cache = prefill(B, cfg, np.zeros((1, mask.shape[1], cfg.hidden)), mask)
    with pytest.raises(ValueError, match="sequence too long"):
        extend(B, cfg, cache, np.zeros((1, 3, cfg.hidden)))
    with pytest.raises(ValueError, match="template embeddings"):
        suffix_tokens(B, np.zeros((1, 2, cfg.hidden)), np.zeros((2, cfg.hidden + 1)))


def test_suffix_candidate_losses_equal_the_full_computation(tiny):
    """The cached per-candidate cross-entropy equals the loss of the full sequences' answer logits."""
    _, cfg, weights = tiny
    rng = np.random.default_rng(6)
    ids = rng.integers(3, cfg.vocab, size=(3, 6))
    mask = np.ones((3, 6), dtype=np.int64)
    mask[0, 4:] = 0
    B = PlainDecoderBackend(weights)
    head = (
        NextTokenHead.from_embeddings(WORDS, weights["emb.word"])
        if cfg.tie_word_embeddings
        else NextTokenHead(WORDS)
    )
    examples = embed_tokens(weights["emb.word"], ids)
    prompts = rng.normal(scale=0.3, size=(2, 2, cfg.hidden))
    template = embed_tokens(weights["emb.word"], [7, 8])
    onehot = np.eye(len(WORDS))[[0, 2, 1]]
    got = candidate_losses(B, cfg, head, prefill(B, cfg, examples, mask), prompts, template, onehot)
    full = []
    for s in full_sequences(examples, mask, suffix_tokens(B, prompts, template)):
        residual = decode(B, cfg, s[None], np.ones((1, len(s)), dtype=np.int64))
        full.append(head.logits(B, cfg, residual, np.array([len(s) - 1]))[0])
    expected = cross_entropy(B, np.stack(full).reshape(2, 3, len(WORDS)), onehot)
    assert got.shape == (2,)
    assert np.abs(got - expected).max() <= 1e-10
