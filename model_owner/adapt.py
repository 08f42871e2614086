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

from model_owner.checkpoints import TOKENIZER_FILES
from mpc_core.nn.adapted import TENSORS_FILE, AdaptationRecord, AttentionFidelity
from mpc_core.nn.attention import EXP_CLIP, MASK_FILL, NORM_DOMAIN
from mpc_core.nn.config import AttentionConfig, EncoderConfig
from mpc_core.nn.features import favor_features, gaussian_features
from mpc_core.nn.weights import load_checkpoint

CORPUS_NAME = "pydoc_data.topics (CPython documentation help texts)"
#: What an adapted checkpoint keeps of the original folder: config, weights and tokenizer.
COPIED = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    *TOKENIZER_FILES,
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


def corpus_batches(
    tokenizer, max_len: int, seed: int, held_out: int, min_len: int | None = None
) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts): sentences joined to about max_len tokens, shuffled with ``seed``.

    With ``min_len`` each sequence's target length is drawn uniformly from [min_len, max_len] (seeded):
    single short sentences as well as long packed ones, the spread of lengths task inputs have.
    """
    lengths = np.random.default_rng([seed, 0x1E])
    target = max_len if min_len is None else int(lengths.integers(min_len, max_len + 1))
    texts, current, length = [], [], 0
    for sentence in corpus_sentences():
        n = len(tokenizer.tokenize(sentence))
        if current and length + n > target - 2:
            texts.append(" ".join(current))
            current, length = [], 0
            target = max_len if min_len is None else int(lengths.integers(min_len, max_len + 1))
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

    def qkv(self, x, layer: int, params: dict | None = None):
        """Queries, keys and values [N, h, T, d] of block ``layer`` for its input x [N, T, H]."""
        p = {**self.t, **(params or {})}
        pre = f"layer.{layer}.attn"
        out = []
        for part in ("q", "k", "v"):
            y = x @ p[f"{pre}.{part}.weight"] + p[f"{pre}.{part}.bias"]
            out.append(y.reshape(x.shape[0], x.shape[1], self.cfg.heads, -1).transpose(1, 2))
        return out

    def attention(self, x, mask, layer: int, attn: AttentionConfig, scale=None, params: dict | None = None):
        """Block ``layer``'s attention context [N, T, H] (before the output projection)."""

        q, k, v = self.qkv(x, layer, params)
        if scale is None and attn.mode != "softmax":
            scale = {**self.t, **(params or {})}.get(f"layer.{layer}.attn.scale")
        return self.core(q, k, v, mask, layer, attn, scale)

    def core(self, q, k, v, mask, layer: int, attn: AttentionConfig, scale=None):
        """The attention core on q, k, v [N, h, T, d]: the context [N, T, H]."""
        import torch

        keep = mask[:, None, :, None].to(self.dtype)
        if attn.mode == "softmax":
            s = q @ k.transpose(-1, -2) / math.sqrt(self.cfg.head_dim)
            s = s.masked_fill(keep.transpose(-1, -2) == 0, -torch.inf)
            ctx = torch.softmax(s, -1) @ v
        else:
            ctx = self._random_feature(attn, layer, q, k, v, keep, scale)
        return ctx.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    def forward(self, x, mask, attn: AttentionConfig, scales: list | None = None, params: dict | None = None):
        """Every block's output [layers][N, T, H] for embeddings x [N, T, H] and a 0/1 mask [N, T]."""
        import torch

        p = {**self.t, **(params or {})}
        cfg, outs = self.cfg, []
        for i in range(cfg.layers):
            pre = f"layer.{i}"

            def lin(z, n, pre=pre):
                return z @ p[f"{pre}.{n}.weight"] + p[f"{pre}.{n}.bias"]

            ctx = self.attention(x, mask, i, attn, None if scales is None else scales[i], params)
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
def _domain_check_class():
    from mpc_core import functions as fn
    from mpc_core.nn.backend import PlainBackend

    class _DomainCheck(PlainBackend):
        """The reference backend, counting inputs outside the domains the secure functions serve."""

        def __init__(self, weights):
            super().__init__(weights)
            self.violations: dict[str, int] = {}

        def _check(self, name: str, x, lo: float, hi: float) -> None:
            x = np.asarray(x)
            bad = int(np.sum((x < lo) | (x > hi)))
            if bad:
                self.violations[name] = self.violations.get(name, 0) + bad

        def _layer_norm(self, x, weight, bias, eps):
            lo, hi = fn.LAYERNORM_VAR_DOMAIN
            self._check("layer_norm variance", np.var(x, axis=-1) + eps, lo, hi)
            return super()._layer_norm(x, weight, bias, eps)

        def gelu(self, x):
            self._check("gelu", x, -fn.GELU_DOMAIN, fn.GELU_DOMAIN)
            return super().gelu(x)

        def exp(self, x, lower=None):
            self._check("exp", x if lower is None else np.maximum(x, lower), -fn.EXP_DOMAIN_LO, 4.0)
            return super().exp(x, lower)

        def reciprocal(self, x, lo, hi, precise=False):
            self._check("reciprocal", x, lo, hi)
            return super().reciprocal(x, lo, hi, precise)

        def rsqrt(self, x, lo=None, hi=None):
            d_lo, d_hi = fn.RSQRT_DOMAIN
            self._check("rsqrt", x, d_lo if lo is None else lo, d_hi if hi is None else hi)
            return super().rsqrt(x, lo, hi)

    return _DomainCheck


def measure_fidelity(
    cfg: EncoderConfig,
    tensors: dict[str, np.ndarray],
    attn: AttentionConfig,
    embeds: np.ndarray,
    mask: np.ndarray,
    batch: int = 32,
    reference: dict[str, np.ndarray] | None = None,
) -> AttentionFidelity:
    """Agreement of ``attn`` on ``tensors`` with exact softmax on ``reference`` (the original checkpoint;
    default ``tensors`` itself), in float64 through the reference PlainBackend."""
    from mpc_core.nn.backend import PlainBackend
    from mpc_core.nn.encoder import encode

    floored = [0, 0]
    DomainCheck = _domain_check_class()

    class Counting(DomainCheck):
        def floor_at(self, x, floor):
            floored[0] += int(np.sum(np.asarray(x) < floor))
            floored[1] += int(np.size(x))
            return super().floor_at(x, floor)

    cos, rel = [], []
    B = Counting(tensors)
    ref_backend = PlainBackend(tensors if reference is None else reference)
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
    violations = dict(B.violations)
    return AttentionFidelity(
        domain_violations=sum(violations.values()),
        violated=sorted(violations),
        pooled_cosine_mean=float(np.clip(np.mean(cos), -1.0, 1.0)),
        pooled_cosine_min=float(np.clip(np.min(cos), -1.0, 1.0)),
        hidden_relative_error=float(np.mean(rel)),
        floored_denominators=hit / total if total else 0.0,
        sequences=len(embeds),
    )


# ---------------------------------------------------------------------------------------------- training
def initial_scales(enc: TorchEncoder, inputs: list, mask) -> list:
    """Per-head s with s^2 = mean |q| |k_c| / sqrt(d) of the softmax model (its typical logit scale),
    clamped to [0.5, 4]: the distillation's starting point."""
    import torch

    scales = []
    with torch.no_grad():
        keep = mask[:, None, :, None].to(enc.dtype)
        count = keep.sum((0, 2, 3))
        for i, h in enumerate(inputs):
            q, k, _ = enc.qkv(h, i)
            k = k - (k * keep).sum(-2, keepdim=True) / keep.sum(-2, keepdim=True)
            nq = (q.norm(dim=-1, keepdim=True) * keep).sum((0, 2, 3)) / count
            nk = (k.norm(dim=-1, keepdim=True) * keep).sum((0, 2, 3)) / count
            s2 = (nq * nk / math.sqrt(enc.cfg.head_dim)).clamp(0.25, 16.0)
            scales.append(s2.sqrt())
    return scales


TUNE_CHOICES = ("scales", "attention", "all")
#: ``--tune all``: corpus sequences are drawn with lengths in [MIN_LEN, max_len] tokens.
MIN_LEN = 8
#: ``--tune all``: half the training sequences carry the data owner's input layout, PROMPT_ROWS placeholder
#: rows after the first token (secp-tune's default prompt length), each row moved by Gaussian noise of
#: std PROMPT_NOISE (about the std of the embedding-layer output a tuned prompt is added to) in half of
#: those: the adapted model then also follows the teacher on prompted inputs.
PROMPT_ROWS = 5
PROMPT_NOISE = 0.5


def replace_tokens(ids: np.ndarray, mask: np.ndarray, first: int, fraction: float, rng) -> np.ndarray:
    """ids with a ``fraction`` of the text tokens (real, after the first ``first`` rows, before the last
    one) replaced by tokens drawn from the same sequences' text tokens (the corpus's own token
    frequencies): new token combinations for the distillation, still no task text."""
    ids = ids.copy()
    lengths = mask.sum(1)
    body = np.zeros(ids.shape, dtype=bool)
    for i, n in enumerate(lengths):
        body[i, first : n - 1] = True
    pool = ids[body]
    pick = body & (rng.random(ids.shape) < fraction)
    ids[pick] = rng.choice(pool, size=int(pick.sum()))
    return ids


def training_inputs(embed, texts: list[str], rng: np.random.Generator, replace: float = 0.0):
    """Embedding-layer outputs [N, T, H] and masks of the training sequences (see PROMPT_ROWS); with
    ``replace`` > 0 a second copy of every sequence with that fraction of its tokens replaced
    (:func:`replace_tokens`) is added."""
    half = len(texts) // 2
    parts = [embed(texts[:half]), embed(texts[half:], PROMPT_ROWS)]
    if replace > 0:
        parts += [embed(texts[:half], 0, replace, rng), embed(texts[half:], PROMPT_ROWS, replace, rng)]
    for x, _ in parts[1::2]:  # the prompted parts: half of them with noise on the placeholder rows
        noisy = rng.random(len(x)) < 0.5
        x[noisy, 1 : 1 + PROMPT_ROWS] += rng.normal(
            scale=PROMPT_NOISE, size=(int(noisy.sum()), PROMPT_ROWS, x.shape[-1])
        )
    t = max(x.shape[1] for x, _ in parts)

    def pad(a):
        return np.pad(a, [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

    return np.concatenate([pad(x) for x, _ in parts]), np.concatenate([pad(m) for _, m in parts])


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
    lr: float = 0.05,
    weight_lr: float = 1e-4,
    pool_size: int = 128,
    replace: float = 0.0,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> AdaptationRecord:
    """Distil the softmax checkpoint in ``model_dir`` to ``mode`` and write the adapted folder ``out_dir``.

    ``tune``: ``scales`` (the per-head scales, block-local loss on the attention contexts), ``attention``
    (also the query and key projections, block-local), or ``all`` (end to end: every block's weights,
    LayerNorms and the scales, loss on every block's output and the pooled sentence embedding, see
    :func:`distil_end_to_end`; ``pool_size`` is then ignored: every training sequence is used, and
    ``replace`` > 0 adds a copy of each with that fraction of its tokens replaced, :func:`replace_tokens`).
    """
    import torch

    if mode not in ("rfa", "favor"):
        raise ValueError(f"adaptation targets a random-feature mode (rfa or favor), not {mode!r}")
    if tune not in TUNE_CHOICES:
        raise ValueError(f"tune must be one of {', '.join(TUNE_CHOICES)}, not {tune!r}")
    model_dir, out = Path(model_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --force")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    cfg, tensors = load_checkpoint(model_dir)
    attn = AttentionConfig(mode=mode, features=features, seed=seed, normalize=True)
    from transformers import AutoTokenizer

    from contract.embedding import PublicEmbeddings
    from contract.inputs import encode_texts

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    min_len = MIN_LEN if tune == "all" else None
    train_texts, test_texts = corpus_batches(tokenizer, max_len, seed, held_out, min_len)
    emb = PublicEmbeddings.from_tensors(cfg, tensors)

    def embed(texts, prompt_len=0, replace=0.0, rng=None):
        enc = encode_texts(tokenizer, texts, prompt_len, max_len + prompt_len)
        ids, mask = np.asarray(enc.input_ids), np.asarray(enc.mask)
        if replace > 0:
            ids = replace_tokens(ids, mask, 1 + prompt_len, replace, rng)
        return emb(ids), mask

    test_x, test_mask = embed(test_texts)
    before = measure_fidelity(cfg, tensors, attn, test_x, test_mask)
    log(f"before: {before.model_dump()}")

    enc32 = TorchEncoder(cfg, tensors, torch.float32)
    rng = np.random.default_rng([seed, 0xAD])
    if tune == "all":
        tx, tm = training_inputs(embed, train_texts, rng, replace)
        learned = distil_end_to_end(
            enc32,
            attn,
            torch.tensor(tx, dtype=torch.float32),
            torch.tensor(tm),
            steps,
            batch,
            lr,
            weight_lr,
            rng,
            log,
        )
        trained = ["attn.scale", "all block weights"]
    else:
        learned = _distil_block_local(
            enc32, attn, embed, train_texts, tune, steps, batch, lr, pool_size, rng, log
        )
        trained = ["attn.scale"] + (["attn.q", "attn.k"] if tune == "attention" else [])
    adapted = {**tensors, **learned}
    after = measure_fidelity(cfg, adapted, attn, test_x, test_mask, reference=tensors)
    log(f"after: {after.model_dump()}")
    seconds = time.perf_counter() - start
    record = AdaptationRecord(
        attention=attn,
        fidelity=after,
        before=before,
        source=model_dir.resolve().name,
        corpus=f"{CORPUS_NAME}: {len(train_texts)} training and {len(test_texts)} held-out sequences",
        trained=trained,
        steps=steps,
        seconds=seconds,
        threads=threads,
    )
    _write_folder(model_dir, out, learned, record, force)
    return record


def _distil_block_local(enc32, attn, embed, train_texts, tune, steps, batch, lr, pool_size, rng, log) -> dict:
    """Block-local distillation: each block's attention context against the teacher's, with the teacher's
    input to that block (a pool of ``pool_size`` sequences); trains the scales (and q, k)."""
    import torch

    cfg = enc32.cfg
    pool = rng.choice(len(train_texts), size=min(pool_size, len(train_texts)), replace=False)
    px, pm = embed([train_texts[i] for i in pool])
    px, pm = torch.tensor(px, dtype=torch.float32), torch.tensor(pm)
    with torch.no_grad():  # the teacher's input to every block, computed once
        inputs = [px, *enc32.forward(px, pm, AttentionConfig())[:-1]]
    init = initial_scales(enc32, inputs, pm)
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
    cached = None
    if not params:  # scales only: queries, keys, values and the teacher's contexts are fixed, compute once
        with torch.no_grad():
            cached = [
                (enc32.qkv(h, i), enc32.attention(h, pm, i, AttentionConfig())) for i, h in enumerate(inputs)
            ]
    for step in range(steps):
        idx = torch.as_tensor(rng.choice(len(pool), size=min(batch, len(pool)), replace=False))
        mk = pm[idx]
        keep = mk[..., None].to(torch.float32)
        loss = torch.zeros(())
        for i in range(cfg.layers):
            if cached is not None:
                (q, k, v), teacher = cached[i]
                student = enc32.core(q[idx], k[idx], v[idx], mk, i, attn, scale=log_s[i].exp())
                teacher = teacher[idx]
            else:
                x = inputs[i][idx]
                with torch.no_grad():
                    teacher = enc32.attention(x, mk, i, AttentionConfig())
                student = enc32.attention(x, mk, i, attn, scale=log_s[i].exp(), params=params)
            loss = loss + (((student - teacher) * keep) ** 2).sum() / ((teacher * keep) ** 2).sum()
        loss = loss / cfg.layers
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step + 1 == steps:
            log(f"step {step}: loss {loss.item():.4f}")
    learned = {f"layer.{i}.attn.scale": s.detach().exp().double().numpy() for i, s in enumerate(log_s)}
    learned.update({name: value.detach().double().numpy() for name, value in params.items()})
    return learned


def trainable_block_tensors(enc: TorchEncoder) -> list[str]:
    """The names end-to-end distillation fine-tunes: every tensor of every block (projections, FFN,
    LayerNorms); the public embedding layer (which the data owner computes) is left as it is."""
    return sorted(name for name in enc.t if name.startswith("layer."))


def distillation_loss(student: list, teacher: list, mask, pooled_weight: float = 1.0):
    """Mean over blocks of |H_s - H_t|^2 / |H_t|^2 (real tokens) plus ``pooled_weight`` x the mean
    1 - cos of the mean-pooled sentence embeddings (the similarity head's input)."""
    keep = mask[..., None].to(student[0].dtype)
    hidden = sum(
        (((s - t) * keep) ** 2).sum() / ((t * keep) ** 2).sum() for s, t in zip(student, teacher, strict=True)
    )
    cosine = (pooled(student[-1], mask) * pooled(teacher[-1], mask)).sum(-1).mean()
    return hidden / len(student) + pooled_weight * (1.0 - cosine)


def distil_end_to_end(
    enc32: TorchEncoder,
    attn: AttentionConfig,
    x,
    mask,
    steps: int,
    batch: int,
    lr: float,
    weight_lr: float,
    rng: np.random.Generator,
    log: Callable[[str], None],
    teacher_batch: int = 64,
) -> dict[str, np.ndarray]:
    """End-to-end distillation through all blocks: the student (the encoder with ``attn``, every block's
    tensors and the per-head scales trainable) follows the softmax teacher's every block output and its
    pooled embedding (:func:`distillation_loss`) on the corpus sequences x [N, T, H] (the public
    embedding layer's output) with mask [N, T].  Adam (scales at ``lr``, weights at ``weight_lr``), the
    weights' rate warmed up over the first 5% of steps and decayed on a cosine to 0.  Returns the learned
    tensors (float64, canonical names)."""
    import torch

    cfg = enc32.cfg
    with torch.no_grad():  # the teacher's block outputs for every training sequence, computed once
        teacher = [torch.empty((0,)) for _ in range(cfg.layers)]
        chunks = [
            enc32.forward(x[i : i + teacher_batch], mask[i : i + teacher_batch], AttentionConfig())
            for i in range(0, len(x), teacher_batch)
        ]
        teacher = [torch.cat([c[i] for c in chunks]) for i in range(cfg.layers)]
        del chunks
        inputs = [x[:256], *(t[:256] for t in teacher[:-1])]
        init = initial_scales(enc32, inputs, mask[:256])
    log_s = [torch.nn.Parameter(s.log()) for s in init]
    names = trainable_block_tensors(enc32)
    params = {name: torch.nn.Parameter(enc32.t[name].clone()) for name in names}
    opt = torch.optim.Adam([{"params": log_s, "lr": lr}, {"params": list(params.values()), "lr": weight_lr}])
    warm = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor, factor])
    for step in range(steps):
        idx = torch.as_tensor(rng.choice(len(x), size=min(batch, len(x)), replace=False))
        mk = mask[idx]
        real = int(mk.sum(1).max())  # trailing padding columns are dropped (masked anyway)
        mk = mk[:, :real]
        student = enc32.forward(x[idx, :real], mk, attn, scales=[s.exp() for s in log_s], params=params)
        loss = distillation_loss(student, [t[idx, :real] for t in teacher], mk)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step + 1 == steps:
            with torch.no_grad():
                cos = (pooled(student[-1], mk) * pooled(teacher[-1][idx, :real], mk)).sum(-1).mean().item()
            scales = torch.cat([s.detach().exp() for s in log_s])
            log(
                f"step {step}: loss {loss.item():.4f}, pooled cosine {cos:.4f}, "
                f"scales {scales.min().item():.2f}-{scales.max().item():.2f}"
            )
    learned = {f"layer.{i}.attn.scale": s.detach().exp().double().numpy() for i, s in enumerate(log_s)}
    learned.update({name: value.detach().double().numpy() for name, value in params.items()})
    return learned


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
