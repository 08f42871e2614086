"""Nonlinear functions on secret shares, written once over SharedTensor for every suite.

Each function states its maths, input domain and error bound in its module docstring, names its traffic
(``ctx.op``) for the benchmarks, and never branches on data (SPMD).  Measured domains of the bundled
all-MiniLM-L6-v2 (SST-2 and AG News, with and without random prompts) are recorded in the modules and in
docs/functions.md.

    exp           (1 + y + y^2/2)^(2^7), y = x / 128        x in [-240, 4]
    reciprocal    octave guess + Goldschmidt                x in [lo, hi] (default [2^-4, 2^10])
    rsqrt         octave guess + coupled Newton             x in [lo, hi] (default [2^-8, 2^8])
    log           octave normalisation + degree-6 poly      x in [lo, hi] (default [2^-8, 2^8])
    gelu          7-term cosine series on |x| < 5, exact    |x| <= 120
                  tails (two windowed comparisons)
    softmax       near-max tree, exp, reciprocal per row       row spread <= 240 (optional public mask)
    layer_norm    exact centring, rsqrt_rows (18 rounds)    var + eps in [2^-5, 2^10]
    less_than, greater_equal, sign, relu, where, maximum, max, argmax: exact (msb-based)
"""

from mpc_core.functions.compare import (
    argmax,
    greater_equal,
    less_than,
    max,
    maximum,
    relu,
    sign,
    where,
)
from mpc_core.functions.exp import EXP_DOMAIN_LO, EXP_SQUARINGS, exp
from mpc_core.functions.gelu import GELU_DOMAIN, GELU_PERIOD, gelu, gelu_reference
from mpc_core.functions.inverse import RECIPROCAL_DOMAIN, RSQRT_DOMAIN, reciprocal, rsqrt
from mpc_core.functions.layernorm import LAYERNORM_VAR_DOMAIN, layer_norm
from mpc_core.functions.log import LOG_DOMAIN, log
from mpc_core.functions.softmax import softmax

__all__ = [
    "EXP_DOMAIN_LO",
    "EXP_SQUARINGS",
    "GELU_DOMAIN",
    "GELU_PERIOD",
    "LAYERNORM_VAR_DOMAIN",
    "LOG_DOMAIN",
    "RECIPROCAL_DOMAIN",
    "RSQRT_DOMAIN",
    "argmax",
    "exp",
    "gelu",
    "gelu_reference",
    "greater_equal",
    "layer_norm",
    "less_than",
    "log",
    "max",
    "maximum",
    "reciprocal",
    "relu",
    "rsqrt",
    "sign",
    "softmax",
    "where",
]
