"""The model owner's adaptation of a softmax checkpoint to a random-feature attention mode (plaintext).

Random-feature attention on a checkpoint trained with softmax is lossy (docs/fidelity.md).  Before sharing,
the model owner distils the checkpoint to the well-posed form of the chosen mode
(:class:`~mpc_core.nn.config.AttentionConfig` ``normalize``: centred keys, l2-normalised queries and keys,
a per-head scale s): the student is the same encoder with that attention, the teacher the original softmax
model, the loss the distance of every block's output to the teacher's plus 1 - cosine of the mean-pooled
sentence embeddings (what the similarity head compares), on a public corpus.  Trained: the per-head
scales (``layer.{i}.attn.scale``) and, with ``tune="attention"``, the query and key projections too.
Everything else is the original checkpoint.

Corpus: the help texts of CPython's own documentation (``pydoc_data.topics``, shipped with every Python
interpreter, so it is on every machine offline; PSF licence).  It is English prose about a programming
language: no text of any task's train, dev or test split, and its topic is far from them, so the
adaptation cannot fit a task.  Paragraphs are split into sentences and grouped into sequences of up to
``max_len`` tokens; a fixed, seeded share is held out for the fidelity measurement.

Fidelity is measured afterwards in float64 with the reference :class:`~mpc_core.nn.backend.PlainBackend`
(the code the servers run, not this module's torch mirror), before and after adaptation, on the held-out
sequences; the record goes next to the adapted checkpoint and, through ``secp-share-model``, into the
public manifest.

The torch forward here mirrors :mod:`mpc_core.nn.attention` for training (it needs gradients); a test
checks that the two agree to float64 precision on the adapted weights.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mpc_core.nn.adapted import TENSORS_FILE, AdaptationRecord, AttentionFidelity
from mpc_core.nn.attention import EXP_CLIP, MASK_FILL, NORM_DOMAIN
from mpc_core.nn.config import AttentionConfig, EncoderConfig
from mpc_core.nn.features import favor_features, gaussian_features
from mpc_core.nn.weights import load_checkpoint

CORPUS_NAME = "pydoc_data.topics (CPython documentation help texts)"
COPIED = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)


# ---------------------------------------------------------------------------------------------- corpus
def corpus_sentences() -> list[str]:
    """English sentences of CPython's help texts (prose only: no code blocks, no prompts)."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith(" ") or ">>>" in para or len(para) < 60:
                continue
            text = " ".join(para.split())
            out.extend(s for s in re.split(r"(?<=[.!?])\s+", text) if 30 <= len(s) <= 400)
    return out


def corpus_batches(tokenizer, max_len: int, seed: int, held_out: int) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts): sentences joined to about max_len tokens, shuffled with ``seed``."""
    texts, current, length = [], [], 0
    for sentence in corpus_sentences():
        n = len(tokenizer.tokenize(sentence))
        if current and length + n > max_len - 2:
            texts.append(" ".join(current))
            current, length = [], 0
        current.append(sentence)
        length += n
    if current:
        texts.append(" ".join(current))
    order = np.random.default_rng([seed, 0xC0]).permutation(len(texts))
    texts = [texts[i] for i in order]
    return texts[held_out:], texts[:held_out]


# ---------------------------------------------------------------------------------------------- torch mirror
class TorchEncoder:
    """The encoder blocks in torch (float32 or float64), softmax or the well-posed random-feature modes."""

    def __init__(self, cfg: EncoderConfig, tensors: dict[str, np.ndarray], dtype) -> None:
        import torch

        self.cfg, self.dtype = cfg, dtype
        self.t = {k: torch.tensor(v, dtype=dtype) for k, v in tensors.items() if not k.startswith("emb.")}

    def features(self, attn: AttentionConfig, layer: int):
        import torch

        d = self.cfg.head_dim
        w = gaussian_features(attn, layer, d) if attn.mode == "rfa" else favor_features(attn, layer, d)
        return torch.tensor(w, dtype=self.dtype)

    def forward(self, x, mask, attn: AttentionConfig, scales: dict | None = None, params: dict | None = None):
        """Every block's output [layers][N, T, H] for embeddings x [N, T, H] and a 0/1 mask [N, T]."""
        import torch

        p = {**self.t, **(params or {})}
        cfg, outs = self.cfg, []
        keep = mask[:, None, :, None].to(self.dtype)
        for i in range(cfg.layers):
            pre = f"layer.{i}"

            def lin(z, n, pre=pre):
                return z @ p[f"{pre}.{n}.weight"] + p[f"{pre}.{n}.bias"]

            def heads(z):
                return z.reshape(z.shape[0], z.shape[1], cfg.heads, -1).transpose(1, 2)

            q, k, v = heads(lin(x, "attn.q")), heads(lin(x, "attn.k")), heads(lin(x, "attn.v"))
            if attn.mode == "softmax":
                s = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
                s = s.masked_fill(keep.transpose(-1, -2) == 0, -torch.inf)
                ctx = torch.softmax(s, -1) @ v
            else:
                scale = scales[i] if scales is not None else p.get(f"{pre}.attn.scale")
                ctx = self._random_feature(attn, i, q, k, v, keep, scale)
            ctx = ctx.transpose(1, 2).reshape(x.shape)
            a = self._ln(lin(ctx, "attn.out") + x, p, f"{pre}.attn.ln")
            h = lin(a, "ffn.in")
            h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
            x = self._ln(lin(h, "ffn.out") + a, p, f"{pre}.ffn.ln")
            outs.append(x)
        return outs

    def _ln(self, x, p, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / (var + self.cfg.layer_norm_eps).sqrt() * p[f"{name}.weight"] + p[f"{name}.bias"]

    def _random_feature(self, attn, layer, q, k, v, keep, scale):
        import torch

        d, m = q.shape[-1], attn.features
        n_keys = keep.sum(-2, keepdim=True).clamp(min=1)  # [N, 1, 1, 1]
        k = k - (k * keep).sum(-2, keepdim=True) / n_keys
        s = torch.as_tensor(attn.scale if scale is None else scale, dtype=self.dtype).reshape(1, -1, 1, 1)
        lo, hi = NORM_DOMAIN

        def norm(z):
            sq = ((z * z).sum(-1, keepdim=True) / d).clamp(lo, hi)
            return z * (sq.rsqrt() * (s / math.sqrt(d)))

        x, y = norm(q), norm(k)
        w = self.features(attn, layer)
        ones = torch.ones_like(v[..., :1])
        vv = torch.cat([v, ones], -1)
        if attn.mode == "rfa":
            phi_q = torch.cat([torch.cos(x @ w), torch.sin(x @ w)], -1)
            phi_k = torch.cat([torch.cos(y @ w), torch.sin(y @ w)], -1) * keep
            out = phi_q @ (phi_k.transpose(-1, -2) @ vv)
            num, den = out[..., :-1], out[..., -1:]
            norm_c = n_keys * m
            return num / (den / norm_c).clamp(min=attn.relative_floor) / norm_c
        dq = x @ w
        dk = y @ w * keep + (keep - 1) * MASK_FILL
        n, h = dq.shape[:2]
        q_shift = dq.max(-1, keepdim=True).values
        k_shift = dk.reshape(n, h, -1).max(-1).values.reshape(n, h, 1, 1)
        phi_q = torch.exp((dq - q_shift).clamp(min=-EXP_CLIP))
        phi_k = torch.exp((dk - k_shift).clamp(min=-EXP_CLIP)) * keep
        out = phi_q @ (phi_k.transpose(-1, -2) @ vv)
        return out[..., :-1] / out[..., -1:].clamp(min=attn.denominator_floor)


def pooled(hidden, mask):
    """Mean over real tokens, l2-normalised (the similarity head's sentence embedding)."""
    keep = mask[..., None].to(hidden.dtype)
    mean = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)
    return mean / mean.norm(dim=-1, keepdim=True).clamp(min=1e-12)


# ---------------------------------------------------------------------------------------------- fidelity
def measure_fidelity(
    cfg: EncoderConfig,
    tensors: dict[str, np.ndarray],
    attn: AttentionConfig,
    embeds: np.ndarray,
    mask: np.ndarray,
    batch: int = 32,
) -> AttentionFidelity:
    """Agreement of ``attn`` with exact softmax, in float64 through the reference PlainBackend."""
    from mpc_core.nn.attention import self_attention  # noqa: F401 - the code path measured
    from mpc_core.nn.backend import PlainBackend
    from mpc_core.nn.encoder import encode

    floored = [0, 0]

    class Counting(PlainBackend):
        def floor_at(self, x, floor):
            floored[0] += int(np.sum(np.asarray(x) < floor))
            floored[1] += int(np.size(x))
            return super().floor_at(x, floor)

    cos, rel = [], []
    B = Counting(tensors)
    ref_backend = PlainBackend(tensors)
    for start in range(0, len(embeds), batch):
        x, mk = embeds[start : start + batch], mask[start : start + batch]
        ref = encode(ref_backend, cfg, AttentionConfig(), x, mk)
        got = encode(B, cfg, attn, x, mk)
        keep = mk[..., None]
        pr = (ref * keep).sum(1) / keep.sum(1)
        pg = (got * keep).sum(1) / keep.sum(1)
        cos.extend(np.sum(pr * pg, -1) / np.linalg.norm(pr, axis=-1) / np.linalg.norm(pg, axis=-1))
        rel.append(np.linalg.norm((got - ref) * keep) / np.linalg.norm(ref * keep))
    hit, total = floored
    return AttentionFidelity(
        pooled_cosine_mean=float(np.mean(cos)),
        pooled_cosine_min=float(np.min(cos)),
        hidden_relative_error=float(np.mean(rel)),
        floored_denominators=hit / total if total else 0.0,
        sequences=len(embeds),
    )


# ---------------------------------------------------------------------------------------------- training
def initial_scales(enc: TorchEncoder, x, mask, target: float = 1.0) -> list:
    """Per-head s with s^2 = mean |q||k_c| / sqrt(d) of the softmax model (its typical logit magnitude),
    capped so that e^(-2 s^2) stays resolvable; a starting point for the distillation."""
    import torch

    scales = []
    with torch.no_grad():
        outs = [x, *enc.forward(x, mask, AttentionConfig())[:-1]]
        keep = mask[:, None, :, None].to(enc.dtype)
        for i, h in enumerate(outs):
            p = enc.t
            q = (
                (h @ p[f"layer.{i}.attn.q.weight"] + p[f"layer.{i}.attn.q.bias"])
                .reshape(h.shape[0], h.shape[1], enc.cfg.heads, -1)
                .transpose(1, 2)
            )
            k = (
                (h @ p[f"layer.{i}.attn.k.weight"] + p[f"layer.{i}.attn.k.bias"])
                .reshape(h.shape[0], h.shape[1], enc.cfg.heads, -1)
                .transpose(1, 2)
            )
            k = k - (k * keep).sum(-2, keepdim=True) / keep.sum(-2, keepdim=True)
            nq = (q.norm(dim=-1, keepdim=True) * keep).sum((0, 2, 3)) / keep.sum((0, 2, 3))
            nk = (k.norm(dim=-1, keepdim=True) * keep).sum((0, 2, 3)) / keep.sum((0, 2, 3))
            s2 = (nq * nk / math.sqrt(enc.cfg.head_dim) * target).clamp(0.25, 16.0)
            scales.append(s2.sqrt())
    return scales


def adapt_checkpoint(
    model_dir: str | Path,
    mode: str,
    out_dir: str | Path,
    features: int = 64,
    seed: int = 0,
    steps: int = 120,
    batch: int = 8,
    max_len: int = 48,
    held_out: int = 48,
    tune: str = "scales",
    threads: int = 2,
    lr: float = 0.03,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> AdaptationRecord:
    """Distil the softmax checkpoint in ``model_dir`` to ``mode`` and write the adapted folder ``out_dir``."""
    import torch

    if mode not in ("rfa", "favor"):
        raise ValueError(f"adaptation targets a random-feature mode (rfa or favor), not {mode!r}")
    if tune not in ("scales", "attention"):
        raise ValueError(f"tune must be 'scales' or 'attention', not {tune!r}")
    model_dir, out = Path(model_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --force")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    cfg, tensors = load_checkpoint(model_dir)
    attn = AttentionConfig(mode=mode, features=features, seed=seed, normalize=True)
    from transformers import AutoTokenizer

    from mpc_core.nn.embedding import PublicEmbeddings
    from mpc_core.nn.inputs import encode_texts

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    train_texts, test_texts = corpus_batches(tokenizer, max_len, seed, held_out)
    emb = PublicEmbeddings.from_tensors(cfg, tensors)

    def embed(texts):
        enc = encode_texts(tokenizer, texts, 0, max_len)
        return emb(enc.input_ids), np.asarray(enc.mask)

    test_x, test_mask = embed(test_texts)
    before = measure_fidelity(cfg, tensors, attn, test_x, test_mask)
    log(f"before: {before.model_dump()}")

    enc32 = TorchEncoder(cfg, tensors, torch.float32)
    rng = np.random.default_rng([seed, 0xAD])
    probe = rng.choice(len(train_texts), size=min(64, len(train_texts)), replace=False)
    px, pm = embed([train_texts[i] for i in probe])
    init = initial_scales(enc32, torch.tensor(px, dtype=torch.float32), torch.tensor(pm))
    log_s = [torch.nn.Parameter(s.log()) for s in init]
    params: dict[str, torch.nn.Parameter] = {}
    if tune == "attention":
        for i in range(cfg.layers):
            for part in ("q", "k"):
                for leaf in ("weight", "bias"):
                    name = f"layer.{i}.attn.{part}.{leaf}"
                    params[name] = torch.nn.Parameter(enc32.t[name].clone())
    groups = [{"params": log_s, "lr": lr}]
    if params:
        groups.append({"params": list(params.values()), "lr": lr * 0.01})
    opt = torch.optim.Adam(groups)
    for step in range(steps):
        idx = rng.choice(len(train_texts), size=min(batch, len(train_texts)), replace=False)
        bx, bm = embed([train_texts[i] for i in idx])
        x, mk = torch.tensor(bx, dtype=torch.float32), torch.tensor(bm)
        with torch.no_grad():
            teacher = enc32.forward(x, mk, AttentionConfig())
        student = enc32.forward(x, mk, attn, scales=[s.exp() for s in log_s], params=params)
        keep = mk[..., None].to(torch.float32)
        loss = (
            sum(
                (((s_l - t_l) * keep) ** 2).sum() / ((t_l * keep) ** 2).sum()
                for s_l, t_l in zip(student, teacher, strict=True)
            )
            / cfg.layers
        )
        loss = loss + (1 - (pooled(student[-1], mk) * pooled(teacher[-1], mk)).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step + 1 == steps:
            log(f"step {step}: loss {loss.item():.4f}")

    adapted = dict(tensors)
    learned: dict[str, np.ndarray] = {}
    for i, s in enumerate(log_s):
        learned[f"layer.{i}.attn.scale"] = s.detach().exp().double().numpy()
    for name, value in params.items():
        learned[name] = value.detach().double().numpy()
    adapted.update(learned)
    after = measure_fidelity(cfg, adapted, attn, test_x, test_mask)
    log(f"after: {after.model_dump()}")
    seconds = time.perf_counter() - start
    record = AdaptationRecord(
        attention=attn,
        fidelity=after,
        before=before,
        source=model_dir.resolve().name,
        corpus=f"{CORPUS_NAME}: {len(train_texts)} training and {len(test_texts)} held-out sequences",
        trained=["attn.scale"] + (["attn.q", "attn.k"] if params else []),
        steps=steps,
        seconds=seconds,
        threads=threads,
    )
    _write_folder(model_dir, out, learned, record, force)
    return record


def _write_folder(model_dir: Path, out: Path, learned: dict, record: AdaptationRecord, force: bool) -> None:
    """The original checkpoint's files, the learned tensors and the record (built aside, then renamed)."""
    import tempfile

    from safetensors.numpy import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name in COPIED:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        for f in model_dir.glob("model-*.safetensors"):
            shutil.copy2(f, tmp / f.name)
        save_file({k: np.ascontiguousarray(v) for k, v in learned.items()}, str(tmp / TENSORS_FILE))
        record.write(tmp)
        if out.exists():
            if not force and any(out.iterdir()):
                raise FileExistsError(f"{out} is not empty")
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
