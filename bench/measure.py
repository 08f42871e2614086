"""Measure every function against float64 on its documented domain: errors, rounds, bytes per element.

``python -m bench.measure [elements]`` prints the table of docs/functions.md.  References are
computed on the encoded inputs (what the engine holds), so the errors are those the protocols add.
Bytes are summed over all participants (the 2pc dealer's offline traffic included) and divided by the
number of input elements; rounds are the largest count of any participant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mpc_core import functions as fn
from mpc_core.functions.gelu import gelu_reference
from mpc_core.functions.rmsnorm import RMSNORM_MS_DOMAIN, rms_norm, rms_norm_reference
from mpc_core.functions.silu import silu, silu_reference
from mpc_core.ring import FixedPoint
from mpc_core.runtime import run_parties
from mpc_core.tensor import SharedTensor

FP = FixedPoint()


def encoded(x: np.ndarray) -> np.ndarray:
    return FP.decode(FP.encode(x))


def log_grid(lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(np.linspace(np.log(lo), np.log(hi), n))


def softmax_ref(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layer_norm_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    d = x - x.mean(axis=-1, keepdims=True)
    return d / np.sqrt((d**2).mean(axis=-1, keepdims=True) + eps) * w + b


@dataclass
class Case:
    name: str
    domain: str
    inputs: Callable[[int, np.random.Generator], np.ndarray]
    secure: Callable[[SharedTensor], SharedTensor]
    reference: Callable[[np.ndarray], np.ndarray]
    elements: Callable[[np.ndarray], int] = lambda x: x.size


def _ln_params(h: int = 384) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return encoded(1 + 0.1 * rng.normal(size=h)), encoded(0.1 * rng.normal(size=h))


def _ln_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of 384 with standard deviations log-uniform over the measured range sqrt([0.11, 131])."""
    rows = max(1, n // 384)
    std = np.sqrt(log_grid(0.11, 131.0, rows))[:, None]
    return rng.normal(size=(rows, 384)) * std + rng.normal(size=(rows, 1))


def _softmax_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of 64 with spreads up to the domain's 240 (and tied maxima in some rows)."""
    rows = max(2, n // 64)
    z = rng.normal(size=(rows, 64))
    spread = np.linspace(0.1, 240.0, rows)[:, None]
    width = z.max(axis=-1, keepdims=True) - z.min(axis=-1, keepdims=True)
    x = z / width * spread + 10 * rng.normal(size=(rows, 1))
    x[0] = np.linspace(-240.0, 0.0, 64)
    x[1, :4] = x[1].max()
    return x


LN_W, LN_B = _ln_params()


RMS_W = _ln_params(576)[0]


def _rms_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of 576 with mean squares log-uniform over [2^-14, 2^10], and one row of SmolLM2's massive
    activations (entries of 27,202 and -3,000: mean square 1.3e6)."""
    rows = max(2, n // 576)
    x = rng.normal(size=(rows, 576)) * np.sqrt(log_grid(2.0**-14, 2.0**10, rows))[:, None]
    x[-1, 7], x[-1, 100] = 27202.0, -3000.0
    return x


def _exp_inputs(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([np.linspace(-16, 0, n // 2), np.linspace(-240, -16, n // 2)])


CASES = [
    Case("exp", "[-240, 0]", _exp_inputs, fn.exp, np.exp),
    Case(
        "reciprocal",
        "[2^-4, 2^10]",
        lambda n, r: log_grid(2.0**-4, 2.0**10, n),
        fn.reciprocal,
        lambda x: 1 / x,
    ),
    Case(
        "reciprocal [1, 128]",
        "[1, 128]",
        lambda n, r: log_grid(1.0, 128.0, n),
        lambda x: fn.reciprocal(x, lo=1.0, hi=128.0),
        lambda x: 1 / x,
    ),
    Case(
        "rsqrt",
        "[2^-8, 2^8]",
        lambda n, r: log_grid(2.0**-8, 2.0**8, n),
        fn.rsqrt,
        lambda x: 1 / np.sqrt(x),
    ),
    Case("log", "[2^-8, 2^8]", lambda n, r: log_grid(2.0**-8, 2.0**8, n), fn.log, np.log),
    Case("gelu", "[-28, 28]", lambda n, r: np.linspace(-28, 28, n), fn.gelu, gelu_reference),
    Case("softmax (rows of 64)", "spread <= 240", _softmax_rows, fn.softmax, softmax_ref),
    Case(
        "layer_norm (rows of 384)",
        "var in [0.11, 131]",
        _ln_rows,
        lambda x: fn.layer_norm(x, LN_W, LN_B, 1e-12),
        lambda x: layer_norm_ref(x, LN_W, LN_B),
    ),
    Case("silu", "[-53, 53]", lambda n, r: np.linspace(-53, 53, n), silu, silu_reference),
    Case(
        "rms_norm (rows of 576)",
        "ms in [2^-14, 1.3e6]",
        _rms_rows,
        lambda x: rms_norm(x, RMS_W, 1e-5),
        lambda x: rms_norm_reference(x, RMS_W, 1e-5, RMSNORM_MS_DOMAIN),
    ),
    Case("relu", "|x| < 2^46", lambda n, r: r.normal(size=n) * 10, fn.relu, lambda x: np.maximum(x, 0)),
    Case(
        "max (rows of 64)",
        "|x| < 2^46",
        lambda n, r: r.normal(size=(max(1, n // 64), 64)) * 10,
        lambda x: fn.max(x, axis=-1),
        lambda x: x.max(axis=-1),
    ),
    Case(
        "argmax (rows of 64)",
        "|x| < 2^30",
        lambda n, r: r.normal(size=(max(1, n // 64), 64)) * 10,
        fn.argmax,
        lambda x: np.eye(x.shape[-1])[x.argmax(axis=-1)],
    ),
]


def measure(case: Case, suite: str, n: int, seed: int = 0) -> dict[str, float]:
    x = case.inputs(n, np.random.default_rng(seed))

    def program(ctx, tensor: SharedTensor):
        before = ctx.stats.total.bytes_sent, ctx.stats.total.rounds
        out = case.secure(tensor)
        after = ctx.stats.total.bytes_sent, ctx.stats.total.rounds
        return out.reveal(), after[0] - before[0], after[1] - before[1]

    results = run_parties(suite, program, x)
    got = results[0][0]
    ref = case.reference(encoded(x))
    err = np.abs(got - ref)
    big = np.abs(ref) >= 1e-2
    return {
        "max_abs": float(err.max()),
        "max_rel": float((err[big] / np.abs(ref[big])).max()) if big.any() else 0.0,
        "tolerance": float((err / (1e-3 + 1e-2 * np.abs(ref))).max()),
        "rounds": max(r[2] for r in results),
        "bytes_per_element": sum(r[1] for r in results) / x.size,
    }


HEADER = (
    "| function | domain | suite | max abs err | max rel err (|ref| >= 0.01) | err / (1e-3 + 1e-2 |ref|) "
    "| rounds | bytes/element |\n|---|---|---|---|---|---|---|---|"
)


def main(n: int = 20000) -> None:
    print(HEADER)
    for case in CASES:
        for suite in ("2pc", "3pc"):
            m = measure(case, suite, n)
            print(
                f"| {case.name} | {case.domain} | {suite} | {m['max_abs']:.2e} | {m['max_rel']:.2e} "
                f"| {m['tolerance']:.2f} | {m['rounds']} | {m['bytes_per_element']:.0f} |"
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
