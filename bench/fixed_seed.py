"""Fixed-seed fingerprints of the engine: every participant's ring outputs of a few ops and a tiny forward.

A refactoring of the engine that must not change behaviour records these before and after and compares
them bit for bit (``record`` then ``compare``).  Seeds come from a development test seed (the servers'
``seeded_setup``) and inputs are shared with a fixed PRG, so two runs of the same code give identical
shares, masks and outputs.  Privacy is irrelevant here: nothing of this runs outside a developer's machine.

    .venv/bin/python -m bench.fixed_seed record before.npz
    .venv/bin/python -m bench.fixed_seed compare before.npz
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mpc_core import functions as fn
from mpc_core.context import Context
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from mpc_core.runtime import make_context
from mpc_core.suites import suite_class
from mpc_core.tensor import SharedTensor
from mpc_core.transport.inprocess import InProcessNetwork
from server.seeding import seeded_setup

TEST_SEED = b"fixed-seed fingerprint"
PARTICIPANTS = 3


def _inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x": rng.normal(scale=2.0, size=(3, 5)),
        "y": rng.normal(scale=2.0, size=(3, 5)),
        "w": rng.normal(scale=0.5, size=(5, 4)),
        "p": rng.uniform(0.5, 8.0, size=(3, 5)),
    }


def _ops(ctx, t: dict[str, SharedTensor], model) -> dict[str, SharedTensor | np.ndarray]:
    x, y, w, p = t["x"], t["y"], t["w"], t["p"]
    out: dict[str, SharedTensor | np.ndarray] = {}
    out["mul"] = x * y
    out["square"] = x.square()
    out["matmul"] = x @ w
    wf = w.fixed("w")
    out["matmul_fixed1"] = x @ wf
    out["matmul_fixed2"] = (y @ wf).truncate(3)
    out["trunc"] = x.truncate(5)
    cos, sin = (x * 0.25).trig(2.0**8, [1, 2, 3])
    out["cos"], out["sin"] = cos[1], sin[2]
    out["fourier"] = x.fourier(2.0**8, [1, 2], [0.5, 0.25], [0.1, 0.0], linear=[(y, 0.5)])
    out["msb"] = x.msb()
    out["msb_window"] = x.msb(bound=64.0, resolution=2.0**-6)
    out["exp"] = fn.exp(x)
    out["reciprocal"] = fn.reciprocal(p)
    out["rsqrt"] = fn.rsqrt(p)
    out["gelu"] = fn.gelu(x)
    out["softmax"] = fn.softmax(x)
    out["relu"] = fn.relu(x)
    out["input"] = SharedTensor.input(ctx, np.arange(4.0) if ctx.participant == 1 else None, (4,), 1)
    out["reveal"] = (x * y).reveal()
    if model is not None:
        out["forward"] = model(ctx)
    return out


def _tiny_model(suite: str, fp: FixedPoint, folder: Path) -> Callable | None:
    """A one-layer random BERT shared with a fixed PRG; returns ctx -> logits (shared)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers_models import make_tiny_model, random_batch

    from model_owner.share import share_tensors
    from mpc_core.nn.backend import SecureBackend
    from mpc_core.nn.batch import candidate_logits
    from mpc_core.nn.config import AttentionConfig
    from mpc_core.nn.heads import MLMHead
    from mpc_core.nn.weights import load_checkpoint, split_public, wrap_shares

    try:  # the public embedding layer belongs to the data owner (issue 19); before that, to mpc_core.nn
        from contract.embedding import PublicEmbeddings
    except ImportError:
        from contract.embedding import PublicEmbeddings

    ckpt = make_tiny_model(folder / "ckpt", "bert", mlm=True, seed=3, num_hidden_layers=1)
    cfg, weights = load_checkpoint(ckpt)
    _, secret = split_public(weights)
    shares = share_tensors(secret, suite, fp, PRG(b"model shares 16b"))
    shapes = {name: tuple(v.shape) for name, v in secret.items()}
    ids, mask = random_batch(np.random.default_rng(4), 2, 8, cfg.vocab, cfg.pad_token_id, 2, 3)
    examples = PublicEmbeddings.from_tensors(cfg, weights)(ids)
    prompts = np.random.default_rng(5).normal(scale=0.3, size=(2, 2, cfg.hidden))
    encoded = [suite_class(suite).split(fp.encode(a), PRG(b"forward inputs16")) for a in (examples, prompts)]

    def forward(ctx) -> SharedTensor:
        own = None if ctx.is_dealer else shares[ctx.participant]
        backend = SecureBackend(ctx, wrap_shares(ctx, own, shapes))
        e, p = (
            SharedTensor.from_share(ctx, None if ctx.is_dealer else s[ctx.participant], a.shape)
            for s, a in zip(encoded, (examples, prompts), strict=True)
        )
        head = MLMHead([7, 9, 20])
        return candidate_logits(backend, cfg, AttentionConfig(), head, e, p, mask, np.array([3, 4]))

    return forward


def _context(me: int, suite: str, transport, fp: FixedPoint) -> Context:
    """A participant's context with the PRG seeds derived from the test seed."""
    ctx = make_context(me, suite, transport, fp)
    seeded_setup(ctx, TEST_SEED)
    return ctx


def run(suite: str, truncation: str, with_model: bool) -> dict[str, np.ndarray]:
    """Every participant's outputs (raw share words, scales, opened values) under the fixed seeds."""
    fp = FixedPoint(truncation=truncation)
    secrets = _inputs(np.random.default_rng(11))
    cls = suite_class(suite)
    prg = PRG(b"fixed input seed")
    shared = {name: cls.split(fp.encode(v), prg) for name, v in secrets.items()}
    with tempfile.TemporaryDirectory() as tmp:
        model = _tiny_model(suite, fp, Path(tmp)) if with_model else None
        network = InProcessNetwork(PARTICIPANTS, timeout_s=120)
        results: list = [None] * PARTICIPANTS
        errors: list = [None] * PARTICIPANTS

        def body(me: int) -> None:
            try:
                ctx = _context(me, suite, network.transport(me), fp)
                inputs = {
                    name: SharedTensor.from_share(
                        ctx, None if ctx.is_dealer else parts[me], secrets[name].shape
                    )
                    for name, parts in shared.items()
                }
                results[me] = (_ops(ctx, inputs, model), ctx.stats.snapshot())
            except BaseException as exc:
                errors[me] = exc
                network.close()

        threads = [threading.Thread(target=body, args=(p,)) for p in range(PARTICIPANTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for exc in errors:
            if exc is not None:
                raise exc
    flat: dict[str, np.ndarray] = {}
    for me, (outs, stats) in enumerate(results):
        for name, value in outs.items():
            key = f"{suite}/{truncation}/P{me}/{name}"
            if isinstance(value, SharedTensor):
                flat[key] = np.asarray(value.data)
                flat[key + ".scale"] = np.asarray(value.scale)
            else:
                flat[key] = np.asarray(value)
        for op, row in stats.items():
            for field in ("bytes", "messages", "rounds"):
                flat[f"{suite}/{truncation}/P{me}/stats/{op}/{field}"] = np.asarray(row[field])
    return flat


def record() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for suite in ("2pc", "3pc"):
        for truncation in ("exact", "probabilistic"):
            out.update(run(suite, truncation, with_model=truncation == "exact"))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "compare"):
        print(__doc__)
        return 2
    now = record()
    if argv[0] == "record":
        np.savez_compressed(argv[1], **now)
        print(f"recorded {len(now)} arrays to {argv[1]}")
        return 0
    before = dict(np.load(argv[1]))
    missing = sorted(set(before) ^ set(now))
    differ = sorted(k for k in set(before) & set(now) if not np.array_equal(before[k], now[k]))
    for key in missing:
        print(f"only in one run: {key}")
    for key in differ:
        print(f"differs: {key}")
    print(f"{len(before)} arrays recorded, {len(now)} now: {len(differ)} differ, {len(missing)} unmatched")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
