"""secp-share-model: output layout, reconstruction, one file alone looks uniform, clear errors, atomicity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers_models import make_tiny_model
from safetensors.numpy import load_file

from contract.embedding import PublicEmbeddings
from contract.manifest import ShareManifest, party_file_tensors, sha256_file
from model_owner.cli import main
from model_owner.share import reconstruct, share_model
from mpc_core.nn.weights import CheckpointError, load_checkpoint, split_public
from mpc_core.ring import FixedPoint

PARTIES = {"2pc": 2, "3pc": 3}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny-bert", "bert", mlm=True)


@pytest.fixture(scope="module", params=["2pc", "3pc"])
def shared(request, checkpoint, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "shared"
    assert main(["--model", str(checkpoint), "--suite", request.param, "--out", str(out)]) == 0
    return request.param, out


def _chi2_quantile(dof: int, z: float = 4.75) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at the normal quantile z (4.75: p = 1e-6)."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * math.sqrt(c)) ** 3


def _uniformity_statistics(words: np.ndarray) -> tuple[float, float]:
    """(chi-square over the 64 bit positions, chi-square over byte values) of uint64 words."""
    words = np.ascontiguousarray(words, dtype=np.uint64).ravel()
    n = words.size
    ones = ((words[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).sum(axis=0).astype(np.float64)
    bit_stat = float((((ones - n / 2) / math.sqrt(n / 4)) ** 2).sum())
    counts = np.bincount(words.view(np.uint8), minlength=256).astype(np.float64)
    expected = 8 * n / 256
    byte_stat = float(((counts - expected) ** 2 / expected).sum())
    return bit_stat, byte_stat


def _looks_uniform(words: np.ndarray) -> bool:
    bit_stat, byte_stat = _uniformity_statistics(words)
    return bit_stat < _chi2_quantile(64) and byte_stat < _chi2_quantile(255)


def test_layout_and_manifest(shared, checkpoint):
    suite, out = shared
    manifest = ShareManifest.read(out)
    cfg, tensors = load_checkpoint(checkpoint)
    public, secret = split_public(tensors)
    assert manifest.suite == suite and manifest.arch == "bert" and manifest.config == cfg
    assert manifest.fixed_point.frac_bits == 16 and manifest.fixed_point.ring_bits == 64
    assert set(manifest.tensors) == set(secret) and not any(k.startswith("emb.") for k in manifest.tensors)
    assert [pf.party for pf in manifest.party_files] == list(range(PARTIES[suite]))
    slots = 1 if suite == "2pc" else 2
    for pf in manifest.party_files:
        assert sha256_file(out / pf.file) == pf.sha256
        shares = load_file(str(out / pf.file))
        assert set(shares) == set(secret)
        for name, share in shares.items():
            assert share.dtype == np.uint64 and share.shape == (slots, *secret[name].shape)
    pub = out / "public"
    assert {"embeddings.safetensors", "config.json", "vocab.txt"} <= {p.name for p in pub.iterdir()}
    emb = PublicEmbeddings.load(out)
    np.testing.assert_array_equal(emb.word, public["emb.word"])
    np.testing.assert_array_equal(emb.ln_bias, public["emb.ln.bias"])
    assert json.loads((pub / "config.json").read_text())["model_type"] == "bert"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_all_files_reconstruct_the_weights(shared, checkpoint):
    _, out = shared
    _, tensors = load_checkpoint(checkpoint)
    _, secret = split_public(tensors)
    weights = reconstruct(out)
    for name, value in secret.items():
        assert np.abs(weights[name] - value).max() <= 2.0**-17 + 1e-12  # fixed-point rounding only
    fp = FixedPoint(16)
    np.testing.assert_array_equal(
        fp.encode(weights["layer.0.attn.q.weight"]), fp.encode(secret["layer.0.attn.q.weight"])
    )


def test_too_few_files_cannot_reconstruct(shared):
    suite, out = shared
    for party in range(PARTIES[suite]):
        with pytest.raises(ValueError, match="cannot be reconstructed"):
            reconstruct(out, [party])
    if suite == "3pc":  # replicated sharing: any two of the three files hold all three additive shares
        full = reconstruct(out)
        pair = reconstruct(out, [2, 0])
        assert all(np.array_equal(full[k], pair[k]) for k in full)


def test_each_party_file_alone_is_uniform(shared, checkpoint):
    _, out = shared
    manifest = ShareManifest.read(out)
    for pf in manifest.party_files:
        words = np.concatenate([s.ravel() for s in party_file_tensors(out, pf.party).values()])
        assert words.size > 20_000
        assert _looks_uniform(words), f"party {pf.party}'s share file is not uniform"
    # Negative control: the same test rejects the fixed-point weights themselves.
    _, tensors = load_checkpoint(checkpoint)
    _, secret = split_public(tensors)
    encoded = np.concatenate([FixedPoint(16).encode(v).ravel() for v in secret.values()])
    assert not _looks_uniform(encoded)


def test_3pc_files_hold_replicated_pairs(checkpoint, tmp_path):
    share_model(checkpoint, "3pc", tmp_path / "s")
    files = [party_file_tensors(tmp_path / "s", p) for p in range(3)]
    for name in files[0]:
        for p in range(3):  # party p holds (x_p, x_{p+1}); x_{p+2} is missing from its file
            np.testing.assert_array_equal(files[p][name][1], files[(p + 1) % 3][name][0])
            missing = files[(p + 2) % 3][name][0]
            assert all(np.mean(files[p][name][slot] == missing) < 0.5 for slot in (0, 1))


def test_fresh_randomness_per_run(checkpoint, tmp_path):
    share_model(checkpoint, "2pc", tmp_path / "a")
    share_model(checkpoint, "2pc", tmp_path / "b")
    a = party_file_tensors(tmp_path / "a", 0)["layer.0.ffn.in.weight"]
    b = party_file_tensors(tmp_path / "b", 0)["layer.0.ffn.in.weight"]
    assert np.mean(a == b) < 0.01
    ra, rb = reconstruct(tmp_path / "a"), reconstruct(tmp_path / "b")
    np.testing.assert_array_equal(ra["layer.0.ffn.in.weight"], rb["layer.0.ffn.in.weight"])


def test_roberta_with_mlm_head(tmp_path):
    ckpt = make_tiny_model(tmp_path / "rob", "roberta", mlm=True)
    manifest = share_model(ckpt, "3pc", tmp_path / "s")
    assert manifest.arch == "roberta" and manifest.config.has_mlm_head
    assert {"mlm.decoder.weight", "mlm.decoder.bias", "mlm.ln.weight"} <= set(manifest.tensors)
    assert manifest.tensors["mlm.decoder.weight"] == [manifest.config.hidden, manifest.config.vocab]


# ---------------------------------------------------------------------------------------------- errors
def _nothing_written(out: Path) -> bool:
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_unsupported_architecture(tmp_path, capsys):
    model = tmp_path / "gpt"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    out = tmp_path / "out"
    assert main(["--model", str(model), "--suite", "2pc", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unsupported architecture 'gpt2'" in err and "bert, roberta" in err
    assert _nothing_written(out)


def test_missing_and_corrupt_checkpoints(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--model", str(tmp_path / "absent"), "--suite", "3pc", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((checkpoint / "config.json").read_text())
    data = (checkpoint / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    assert main(["--model", str(corrupt), "--suite", "3pc", "--out", str(out)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert _nothing_written(out)


def test_refuses_non_empty_output_unless_forced(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["--model", str(checkpoint), "--suite", "2pc", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["--model", str(checkpoint), "--suite", "2pc", "--out", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()


def test_tampered_share_file_is_rejected(checkpoint, tmp_path):
    share_model(checkpoint, "2pc", tmp_path / "s")
    path = tmp_path / "s" / "party1.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        party_file_tensors(tmp_path / "s", 1)
