"""Secure vs plaintext for every attention mode on all-MiniLM-L6-v2 (used by ``bench.fidelity --secure``).

The first N test examples of each task, zero-shot (no prompt), run through the secure backend in each suite
(all participants as threads, weights shared in memory with the model owner's ``share_tensors``) and
through the float64 plaintext backend; reports the max abs logit error, prediction agreement and the
secure run's wall seconds and traffic.  Errors are reported, not asserted: a mode whose values leave the
fixed-point or function domains shows up here as a large error.
"""

from __future__ import annotations

import time

import numpy as np

from contract.inputs import encode_texts
from model_owner.share import share_tensors
from mpc_core.nn.backend import PlainBackend, SecureBackend
from mpc_core.nn.batch import candidate_logits
from mpc_core.nn.config import AttentionConfig
from mpc_core.nn.weights import split_public, wrap_shares
from mpc_core.prg import system_prg
from mpc_core.ring import FixedPoint
from mpc_core.runtime import run_parties


def secure_study(
    study, tasks: list[str], modes: list[tuple[str, int]], count: int, suites: list[str], frac_bits: int = 16
) -> list[dict]:
    from bench.fidelity import ROOT, read_tsv

    rows = []
    _, secret = split_public(study.weights)
    shapes = {k: v.shape for k, v in secret.items()}
    for suite in suites:
        fp = FixedPoint(frac_bits)
        shares = share_tensors(secret, suite, fp, system_prg())
        for task in tasks:
            texts, labels = read_tsv(ROOT / "data" / task / "test.tsv")
            texts, labels = texts[:count], labels[:count]
            head = study.head(task)
            enc = encode_texts(study.tokenizer, texts, 0, study.max_len)
            examples = study.emb(enc.input_ids)
            prompts = np.zeros((1, 0, study.cfg.hidden))
            for mode, m in modes:
                attn = AttentionConfig(mode=mode, features=m or 64)
                ref = candidate_logits(
                    PlainBackend(study.weights), study.cfg, attn, head, examples, prompts, enc.mask
                )

                def program(ctx, E, P, attn=attn, head=head, mask=enc.mask, shares=shares):
                    own = shares[ctx.participant] if ctx.participant < len(shares) else None
                    B = SecureBackend(ctx, wrap_shares(ctx, own, shapes))
                    out = candidate_logits(B, study.cfg, attn, head, E, P, mask).reveal()
                    return out, ctx.stats.snapshot()["total"]

                start = time.perf_counter()
                results = run_parties(suite, program, examples, prompts, fp=fp)
                seconds = time.perf_counter() - start
                out = results[0][0]
                sent = sum(r[1]["bytes"] for r in results)
                err = float(np.abs(out - ref).max())
                row = {
                    "suite": suite,
                    "frac_bits": frac_bits,
                    "task": task,
                    "mode": mode,
                    "features": m,
                    "examples": len(texts),
                    "tokens": int(enc.mask.shape[1]),
                    "max_abs_logit_error": err,
                    "prediction_agreement": float(np.mean(out[0].argmax(-1) == ref[0].argmax(-1))),
                    "plaintext_accuracy": float(np.mean(ref[0].argmax(-1) == labels)),
                    "secure_accuracy": float(np.mean(out[0].argmax(-1) == labels)),
                    "seconds": seconds,
                    "bytes_all_parties": sent,
                    "rounds_party0": results[0][1]["rounds"],
                }
                rows.append(row)
                print(
                    f"{suite} {task:8s} {mode:8s} m={m or '-':>4} err {err:.3g} "
                    f"agree {row['prediction_agreement']:.3f} ({seconds:.0f} s, {sent / 2**20:.0f} MiB)",
                    flush=True,
                )
    return rows
