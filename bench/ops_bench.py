"""Secure operations in both suites: the ``ops`` section of the benchmark.

Each case names its inputs (with the domain they are drawn from), the secure operation and the float64
reference of the same computation; ``max_abs_err`` is measured on exactly those inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.harness import Prepare, measure
from mpc_core.functions.rmsnorm import RMSNORM_MS_DOMAIN, rms_norm_reference
from mpc_core.functions.silu import silu_reference
from mpc_core.tensor import SharedTensor
from server.programs.ops import BERT_BASE, BERT_LAYER_SHAPES, BERT_LAYER_WEIGHTS, OPS, bert_layer_forward


@dataclass
class OpCase:
    """One row of the ``ops`` section: the op of :data:`server.programs.ops.OPS` of the same name."""

    op: str
    shape: list[int]
    inputs: list[Callable[[np.random.Generator], np.ndarray]]
    reference: Callable[..., np.ndarray]
    prepare: Prepare | None = None
    notes: str = ""
    transform: Callable[..., list[np.ndarray]] | None = None


def _gelu_ref(x: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def _softmax_ref(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _layernorm_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * w + b


def _rmsnorm_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return rms_norm_reference(x, w, 1e-5, RMSNORM_MS_DOMAIN)


def _massive_rows(x: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    """Rows spread over 2^-5..2^4 in scale; row 0 carries entries of 27,202 and -3,000 (SmolLM2's first
    token reaches mean squares of 1.3e6); the weight is 1 + N(0, 0.1)."""
    x = x * (2.0 ** np.linspace(-5.0, 4.0, x.shape[0]))[:, None]
    x[0, 7], x[0, 100] = 27202.0, -3000.0
    return [x, 1.0 + w]


def _bert_layer_ref(x: np.ndarray, *weights: np.ndarray) -> np.ndarray:
    """The same block in float64 (mpc_core.nn's plaintext backend: exact softmax, GELU, LayerNorm)."""
    from mpc_core.nn.backend import PlainBackend

    return bert_layer_forward(PlainBackend(dict(zip(BERT_LAYER_WEIGHTS, weights, strict=True))), x)


def _bert_layer_inputs() -> list[Callable[[np.random.Generator], np.ndarray]]:
    """x ~ N(0, 1) [128, 768]; matrices and biases N(0, 0.02); LayerNorm weights 1 + N(0, 0.02)."""
    makers = [_normal(128, BERT_BASE["hidden"])]
    for name, shape in BERT_LAYER_SHAPES.items():
        offset = 1.0 if name.endswith(".ln.weight") else 0.0
        makers.append(lambda r, shape=shape, offset=offset: offset + r.normal(0.0, 0.02, size=shape))
    return makers


def _warm_bert_layer(ctx, x: SharedTensor, *weights: SharedTensor) -> tuple[SharedTensor, ...]:
    """Open the weights' masks once before timing (as a loaded model does at its first batch)."""
    OPS["bert_layer"].run(x, *weights).reveal()
    return (x, *weights)


def _warm_fixed(ctx, x: SharedTensor, w: SharedTensor) -> tuple[SharedTensor, SharedTensor]:
    """Open the weight's mask once before timing (as a loaded model does at start-up)."""
    OPS["matmul_fixed_weight"].run(x, w).reveal()
    return x, w


def _normal(*shape: int, std: float = 1.0) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda r: r.normal(0.0, std, size=shape)


def _uniform(lo: float, hi: float, *shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda r: r.uniform(lo, hi, size=shape)


def op_cases() -> list[OpCase]:
    """Inputs (and their domains) and float64 references for every op of the catalogue."""
    x128, w768 = _normal(128, 768), _normal(768, 768, std=0.02)
    return [
        OpCase("matmul", [128, 768, 768], [x128, w768], lambda x, w: x @ w, notes="fresh operands"),
        OpCase(
            "matmul_fixed_weight",
            [128, 768, 768],
            [x128, w768],
            lambda x, w: x @ w,
            prepare=_warm_fixed,
            notes="weight operand fixed; its mask opened once before timing",
        ),
        OpCase(
            "softmax",
            [12, 128, 128],
            [_uniform(-15, 15, 12, 128, 128)],
            _softmax_ref,
            notes="rows spread up to 30",
        ),
        OpCase("gelu", [128, 3072], [_uniform(-10, 10, 128, 3072)], _gelu_ref, notes="inputs on [-10, 10]"),
        OpCase(
            "layernorm",
            [128, 768],
            [_normal(128, 768, std=3.0), _normal(768, std=0.1), _normal(768, std=0.1)],
            _layernorm_ref,  # on the transformed inputs: the weight is already 1 + N(0, 0.1)
            notes="weight and bias shared",
            transform=lambda x, w, b: [x, 1.0 + w, b],
        ),
        OpCase(
            "rmsnorm",
            [128, 576],
            [_normal(128, 576), _normal(576, std=0.1)],
            _rmsnorm_ref,
            notes="rows N(0, 1) times 2^-5..2^4, row 0 with SmolLM2's massive activations; weight shared",
            transform=_massive_rows,
        ),
        OpCase(
            "silu",
            [128, 1536],
            [_normal(128, 1536, std=4.0)],
            silu_reference,
            notes="inputs N(0, 4^2) clipped to SiLU's domain |x| <= 53",
            transform=lambda x: [np.clip(x, -53.0, 53.0)],
        ),
        OpCase("exp", [128, 768], [_uniform(-20, 0, 128, 768)], np.exp, notes="inputs on [-20, 0]"),
        OpCase(
            "reciprocal",
            [128, 768],
            [_uniform(1, 128, 128, 768)],
            lambda x: 1.0 / x,
            notes="inputs on [1, 128]",
        ),
        OpCase(
            "rsqrt",
            [128, 768],
            [_uniform(0.02, 100, 128, 768)],
            lambda x: 1.0 / np.sqrt(x),
            notes="inputs on [0.02, 100]",
        ),
        OpCase(
            "cos",
            [128, 768],
            [_uniform(-30, 30, 128, 768)],
            lambda x: np.cos(2 * np.pi * x / 64.0),
            notes="one harmonic, period 64",
        ),
        OpCase(
            "bert_layer",
            [128, 768],
            _bert_layer_inputs(),
            _bert_layer_ref,
            prepare=_warm_bert_layer,
            notes="BERT-base block (12 heads, FFN 3072, exact softmax), weights N(0, 0.02) fixed and warmed",
        ),
        OpCase(
            "compare",
            [128, 768],
            [x128, x128],
            lambda x, y: (x < y).astype(np.float64),
            notes="x < y as a bit",
        ),
    ]


def case_inputs(case: OpCase, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    drawn = [make(rng) for make in case.inputs]
    return case.transform(*drawn) if case.transform else drawn


def bench_ops(
    suites: tuple[str, ...] = ("2pc", "3pc"), only: set[str] | None = None
) -> list[dict[str, object]]:
    rows = []
    for case in op_cases():
        if only and case.op not in only:
            continue
        inputs = case_inputs(case)
        expected = case.reference(*inputs)
        secure = OPS[case.op].run
        for suite in suites:
            m = measure(
                suite, case.op, lambda ctx, *xs, secure=secure: secure(*xs), *inputs, prepare=case.prepare
            )
            rows.append(
                {
                    "suite": suite,
                    "op": case.op,
                    "shape": case.shape,
                    "transport": "inprocess",
                    "seconds": round(m.seconds, 4),
                    "party_cpu_seconds": m.party_cpu_seconds,
                    "bytes": m.bytes,
                    "dealer_bytes": m.dealer_bytes,
                    "rounds": m.rounds,
                    "max_abs_err": float(np.max(np.abs(m.output - expected))),
                    "notes": case.notes,
                }
            )
            print(
                f"  ops {suite} {case.op}: {m.seconds:.3f} s, {m.bytes / 2**20:.2f} MiB, {m.rounds} rounds",
                flush=True,
            )
    return rows
