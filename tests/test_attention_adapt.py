"""The model owner's adaptation (secp-adapt-model), its record, and who reads it.

On a tiny random checkpoint (fast; says nothing about accuracy): the torch mirror used for training is the
reference code's function; the adapted folder loads with its learned tensors; the record goes into the
manifest; the servers' and the plain oracle's attention is the recorded one; adapted modes match plaintext
on shares in both suites; the data owner's check refuses poor or unknown fidelity unless told to go on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_models import make_tiny_model, random_batch

from contract.embedding import PublicEmbeddings
from contract.manifest import ShareManifest, load_party_shares
from model_owner.adapt import (
    TorchEncoder,
    adapt_checkpoint,
    corpus_sentences,
    distil_end_to_end,
    distillation_loss,
    trainable_block_tensors,
)
from model_owner.share import share_model
from mpc_core.nn.adapted import (
    FIDELITY_MIN_COSINE,
    AdaptationRecord,
    AttentionFidelity,
    attention_for,
    fidelity_problem,
    read_record,
)
from mpc_core.nn.backend import PlainBackend, SecureBackend
from mpc_core.nn.batch import candidate_logits
from mpc_core.nn.config import AttentionConfig
from mpc_core.nn.encoder import encode
from mpc_core.nn.heads import SimilarityHead
from mpc_core.nn.weights import CheckpointError, load_checkpoint
from mpc_core.runtime import run_parties

TOL = 1e-2


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(original folder, rfa-adapted folder, favor-adapted folder) of a tiny BERT, a few steps each."""
    root = tmp_path_factory.mktemp("adapt")
    ckpt = make_tiny_model(root / "ckpt", "bert", mlm=False, seed=7)
    out = {}
    for mode in ("rfa", "favor"):
        adapt_checkpoint(
            ckpt, mode, root / mode, features=16, steps=3, batch=4, max_len=16, held_out=6, log=lambda _: None
        )
        out[mode] = root / mode
    return ckpt, out


def _batch(cfg, weights, seed=1):
    ids, mask = random_batch(np.random.default_rng(seed), 3, 10, cfg.vocab, cfg.pad_token_id, 2, 3)
    return PublicEmbeddings.from_tensors(cfg, weights)(ids), mask


def test_corpus_is_prose_and_no_task_text():
    sentences = corpus_sentences()
    assert len(sentences) > 1000
    assert all(">>>" not in s for s in sentences)
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data"
    task_lines = set()
    for f in data.glob("*/*.tsv"):
        task_lines.update(line.split("\t", 1)[-1].strip() for line in f.read_text().splitlines())
    assert not task_lines & set(sentences)


@pytest.mark.parametrize("mode", ["rfa", "favor"])
def test_the_adapted_folder_loads_with_its_learned_scales_and_record(adapted, mode):
    ckpt, folders = adapted
    cfg, weights = load_checkpoint(folders[mode])
    _, original = load_checkpoint(ckpt)
    scales = [weights[f"layer.{i}.attn.scale"] for i in range(cfg.layers)]
    assert all(s.shape == (cfg.heads,) and np.all(s > 0) for s in scales)
    assert set(weights) - set(original) == {f"layer.{i}.attn.scale" for i in range(cfg.layers)}
    record = read_record(folders[mode])
    assert record is not None and record.attention.mode == mode and record.attention.normalize
    assert record.steps == 3 and record.threads == 2 and record.seconds > 0
    assert "pydoc_data" in record.corpus
    assert 0 <= record.fidelity.floored_denominators <= 1


@pytest.fixture(scope="module")
def adapted_all(adapted, tmp_path_factory):
    """{mode: folder} of the same tiny BERT adapted end to end (--tune all), a few steps each."""
    ckpt, _ = adapted
    root = tmp_path_factory.mktemp("adapt_all")
    for mode in ("rfa", "favor"):
        adapt_checkpoint(
            ckpt,
            mode,
            root / mode,
            features=16,
            steps=3,
            batch=4,
            max_len=16,
            held_out=6,
            tune="all",
            weight_lr=1e-2,
            log=lambda _: None,
        )
    return {mode: root / mode for mode in ("rfa", "favor")}


@pytest.mark.parametrize("mode", ["rfa", "favor"])
def test_end_to_end_adaptation_replaces_every_block_tensor(adapted, adapted_all, mode):
    ckpt, _ = adapted
    cfg, weights = load_checkpoint(adapted_all[mode])
    _, original = load_checkpoint(ckpt)
    assert set(weights) - set(original) == {f"layer.{i}.attn.scale" for i in range(cfg.layers)}
    blocks = [name for name in original if name.startswith("layer.")]
    changed = [name for name in blocks if not np.array_equal(weights[name], original[name])]
    assert set(changed) == set(blocks)  # projections, FFN and LayerNorms of every block were trained
    assert all(np.array_equal(weights[n], original[n]) for n in original if not n.startswith("layer."))
    record = read_record(adapted_all[mode])
    assert "all block weights" in record.trained and record.steps == 3


def test_fidelity_of_an_end_to_end_adaptation_is_against_the_original_model(adapted, adapted_all):
    """Softmax on the fine-tuned weights is not the teacher: the reference must be the original tensors."""
    from model_owner.adapt import measure_fidelity

    ckpt, _ = adapted
    cfg, original = load_checkpoint(ckpt)
    _, weights = load_checkpoint(adapted_all["favor"])
    x, mask = _batch(cfg, original, seed=6)
    softmax = AttentionConfig()
    assert measure_fidelity(cfg, weights, softmax, x, mask).pooled_cosine_mean == pytest.approx(1.0)
    moved = measure_fidelity(cfg, weights, softmax, x, mask, reference=original)
    assert moved.pooled_cosine_mean < 1.0 - 1e-6
    same = measure_fidelity(cfg, original, softmax, x, mask, reference=original)
    assert same.pooled_cosine_mean == pytest.approx(1.0)


def test_varied_corpus_lengths_and_prompted_training_inputs(adapted):
    from transformers import AutoTokenizer

    from model_owner.adapt import PROMPT_ROWS, corpus_batches, training_inputs

    ckpt, _ = adapted
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    packed, _ = corpus_batches(tokenizer, 48, 0, 4)
    varied, _ = corpus_batches(tokenizer, 48, 0, 4, min_len=8)
    counts = np.array([len(tokenizer.tokenize(t)) for t in varied])
    assert len(varied) > len(packed)
    assert np.mean(counts < 20) > 0.2 and np.mean(counts > 30) > 0.2
    cfg, weights = load_checkpoint(ckpt)
    emb = PublicEmbeddings.from_tensors(cfg, weights)
    from contract.inputs import encode_texts

    def embed(texts, prompt_len=0):
        enc = encode_texts(tokenizer, texts, prompt_len, 24 + prompt_len)
        return emb(enc.input_ids), np.asarray(enc.mask)

    x, mask = training_inputs(embed, varied[:40], np.random.default_rng(0))
    assert x.shape[:2] == mask.shape and len(x) == 40
    plain, prompted = embed(varied[20:40], PROMPT_ROWS)[0], x[20:]
    rows = slice(1, 1 + PROMPT_ROWS)
    moved = np.abs(prompted[:, rows] - plain[:, rows]).max(axis=(1, 2)) > 0
    assert 0 < moved.sum() < 20  # some prompted sequences carry noise on the placeholder rows, some do not
    t = plain.shape[1]
    np.testing.assert_array_equal(prompted[:, 1 + PROMPT_ROWS : t], plain[:, 1 + PROMPT_ROWS :])


def test_replace_tokens_touches_only_text_tokens():
    from model_owner.adapt import replace_tokens

    rng = np.random.default_rng(0)
    ids = np.array(
        [[101, 7, 7, 11, 12, 13, 14, 15, 16, 102, 0, 0], [101, 7, 7, 21, 22, 23, 24, 102, 0, 0, 0, 0]]
    )
    mask = (ids != 0).astype(np.int64)
    out = replace_tokens(ids, mask, 3, 0.5, rng)
    assert out.shape == ids.shape
    np.testing.assert_array_equal(out[:, :3], ids[:, :3])  # first token and placeholder rows kept
    np.testing.assert_array_equal(out[ids == 0], 0)  # padding kept
    assert out[0, 9] == 102 and out[1, 7] == 102  # the last real token kept
    body = np.array([11, 12, 13, 14, 15, 16, 21, 22, 23, 24])
    changed = out != ids
    assert changed.any() and np.isin(out[changed], body).all()
    np.testing.assert_array_equal(replace_tokens(ids, mask, 3, 0.0, rng), ids)


def test_distillation_loss_is_zero_only_at_the_teacher():
    import torch

    gen = torch.Generator().manual_seed(0)
    teacher = [torch.randn(3, 5, 8, generator=gen) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    assert distillation_loss(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    padded = [t.clone() for t in teacher]
    for t in padded:
        t[1, 3:] += 100.0  # padding rows do not count
    assert distillation_loss(padded, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    moved = [teacher[0], teacher[1] + 0.1 * torch.randn(3, 5, 8, generator=gen)]
    assert distillation_loss(moved, teacher, mask).item() > 1e-4


@pytest.mark.parametrize("mode", ["rfa", "favor"])
def test_end_to_end_distillation_lowers_the_loss(adapted, mode):
    """On the tiny model the student with the random-feature mode moves towards the softmax teacher."""
    import torch

    ckpt, _ = adapted
    cfg, weights = load_checkpoint(ckpt)
    attn = AttentionConfig(mode=mode, features=16, normalize=True)
    x, mask = _batch(cfg, weights, seed=5)
    x, mask = torch.tensor(x, dtype=torch.float32), torch.tensor(mask)
    enc = TorchEncoder(cfg, weights, torch.float32)
    teacher = enc.forward(x, mask, AttentionConfig())
    start = distillation_loss(enc.forward(x, mask, attn), teacher, mask).item()
    rng = np.random.default_rng(0)
    learned = distil_end_to_end(enc, attn, x, mask, 40, 3, 0.05, 3e-3, rng, log=lambda _: None)
    assert set(learned) >= set(trainable_block_tensors(enc))
    student = TorchEncoder(cfg, {**weights, **learned}, torch.float32)
    end = distillation_loss(student.forward(x, mask, attn), teacher, mask).item()
    assert end < 0.7 * start


@pytest.mark.parametrize("tuned", ["scales", "all"])
@pytest.mark.parametrize("mode", ["rfa", "favor"])
def test_torch_mirror_is_the_reference_function(adapted, adapted_all, mode, tuned):
    """The distillation trains the function the servers compute (float64, padding included)."""
    import torch

    folder = adapted[1][mode] if tuned == "scales" else adapted_all[mode]
    cfg, weights = load_checkpoint(folder)
    attn = read_record(folder).attention
    x, mask = _batch(cfg, weights)
    ref = encode(PlainBackend(weights), cfg, attn, x, mask)
    mirror = TorchEncoder(cfg, weights, torch.float64)
    got = mirror.forward(torch.tensor(x), torch.tensor(mask), attn)[-1].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_share_model_carries_the_record_into_the_manifest(adapted, tmp_path):
    _, folders = adapted
    share_model(folders["rfa"], "2pc", tmp_path / "shared")
    manifest = ShareManifest.read(tmp_path / "shared")
    assert manifest.attention == read_record(folders["rfa"])
    assert read_record(tmp_path / "shared") == manifest.attention
    assert "layer.0.attn.scale" in manifest.tensors


def test_a_plain_checkpoint_has_no_record(adapted, tmp_path):
    ckpt, _ = adapted
    assert read_record(ckpt) is None
    share_model(ckpt, "2pc", tmp_path / "shared")
    assert ShareManifest.read(tmp_path / "shared").attention is None


def test_a_corrupt_learned_tensor_file_is_refused(adapted, tmp_path):
    import shutil

    from safetensors.numpy import save_file

    _, folders = adapted
    bad = tmp_path / "bad"
    shutil.copytree(folders["rfa"], bad)
    save_file({"layer.0.attn.scale": np.ones(3)}, str(bad / "secp_attention.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        load_checkpoint(bad)


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
@pytest.mark.parametrize("mode", ["rfa", "favor"])
def test_adapted_modes_match_plaintext_on_shares(adapted, tmp_path, suite, mode):
    _, folders = adapted
    cfg, weights = load_checkpoint(folders[mode])
    share_model(folders[mode], suite, tmp_path / "shared")
    attn = attention_for(mode, 64, read_record(tmp_path / "shared"))
    assert attn.normalize and attn.features == 16
    x, mask = _batch(cfg, weights, seed=2)
    prompts = np.random.default_rng(3).normal(scale=0.3, size=(2, 2, cfg.hidden))
    anchors = np.random.default_rng(4).normal(size=(3, cfg.hidden))
    head = SimilarityHead(anchors / np.linalg.norm(anchors, axis=-1, keepdims=True), scale=20.0)
    ref = candidate_logits(PlainBackend(weights), cfg, attn, head, x, prompts, mask)

    def program(ctx, xs, ps):
        B = SecureBackend(ctx, load_party_shares(ctx, tmp_path / "shared"))
        return candidate_logits(B, cfg, attn, head, xs, ps, mask).reveal()

    got = run_parties(suite, program, x, prompts)[0]
    assert np.abs(got - ref).max() <= TOL


def _record(mode: str, cosine: float) -> AdaptationRecord:
    fid = AttentionFidelity(
        pooled_cosine_mean=cosine,
        pooled_cosine_min=cosine,
        hidden_relative_error=0.1,
        floored_denominators=0.0,
        sequences=4,
    )
    return AdaptationRecord(
        attention=AttentionConfig(mode=mode, normalize=True),
        fidelity=fid,
        before=fid,
        corpus="c",
        trained=["attn.scale"],
        steps=1,
        seconds=1.0,
        threads=2,
    )


def test_fidelity_policy():
    assert fidelity_problem(None, "softmax") is None
    assert "unknown" in fidelity_problem(None, "rfa")
    assert "secp-adapt-model --attention rfa" in fidelity_problem(None, "rfa")
    assert "adapted to 'favor'" in fidelity_problem(_record("favor", 0.99), "rfa")
    assert "poor" in fidelity_problem(_record("rfa", FIDELITY_MIN_COSINE - 0.01), "rfa")
    assert fidelity_problem(_record("rfa", FIDELITY_MIN_COSINE), "rfa") is None
    # the run uses the recorded configuration for the adapted mode, the plain one otherwise
    assert attention_for("rfa", 32, _record("rfa", 0.99)).normalize
    assert attention_for("favor", 32, _record("rfa", 0.99)) == AttentionConfig(mode="favor", features=32)


def test_secp_tune_refuses_unknown_fidelity_unless_asked(adapted, capsys):
    from data_owner.cli import check_attention_fidelity
    from data_owner.errors import DataOwnerError

    ckpt, folders = adapted
    check_attention_fidelity(str(ckpt), "softmax", accept=False)
    with pytest.raises(DataOwnerError, match=r"fidelity is unknown.*--accept-low-fidelity"):
        check_attention_fidelity(str(ckpt), "rfa", accept=False)
    check_attention_fidelity(str(ckpt), "rfa", accept=True)
    assert "running anyway" in capsys.readouterr().err
    record = read_record(folders["rfa"])
    if not record.fidelity.holds():  # a 3-step adaptation of a random tiny model may well not hold
        with pytest.raises(DataOwnerError, match="poor"):
            check_attention_fidelity(str(folders["rfa"]), "rfa", accept=False)
    else:
        check_attention_fidelity(str(folders["rfa"]), "rfa", accept=False)


def test_secp_tune_cli_refuses_before_creating_the_run_folder(adapted, tmp_path):
    from click.testing import CliRunner

    from data_owner.cli import main

    ckpt, _ = adapted
    out = tmp_path / "run"
    args = ["run", "--task", "sst2", "--model", str(ckpt), "--backend", "plain", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--attention", "rfa"])
    assert result.exit_code == 2
    assert "fidelity is unknown" in result.output
    assert not out.exists()


def test_secp_adapt_model_cli_errors(adapted, tmp_path, capsys):
    from model_owner.adapt_cli import main

    ckpt, folders = adapted
    assert main(["--model", str(ckpt), "--attention", "rfa", "--out", str(folders["rfa"])]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "none"), "--attention", "rfa", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    json.dumps(read_record(folders["rfa"]).model_dump())  # the record is plain JSON
