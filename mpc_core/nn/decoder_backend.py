"""What the LLaMA decoder layers need beyond :class:`~mpc_core.nn.backend.Backend`, for both backends.

The decoder is written once (:mod:`mpc_core.nn.decoder`) against these few extra operations:

* ``project`` / ``project_many`` / ``project_columns``: bias-free linear layers ``x @ W`` (LLaMA has no
  biases); on shares several layers on the same input are one fused product (one opening of x in 2pc) and
  every weight is a fixed operand whose Beaver mask is opened once per context;
* ``rms_norm``: RMSNorm with the checkpoint's weight, exact in float64 (the secure domain's floor and
  upper limit applied), :mod:`mpc_core.functions.rmsnorm` on shares (per-row power-of-two normalisation,
  then rsqrt);
* ``silu``: exact in float64, :mod:`mpc_core.functions.silu` (cosine series, stated bound) on shares;
* ``rotate``: x cos + rotate_half(x) sin with public tables (rotary embeddings): on shares the tables are
  ring integers, so the rotation is local products plus one truncation.

The classes extend the existing backends without changing them; nothing here decides from a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.functions.rmsnorm import RMSNORM_MS_DOMAIN, rms_norm_reference
from mpc_core.functions.silu import silu_reference
from mpc_core.nn.backend import PlainBackend, SecureBackend, Value, _rows

if TYPE_CHECKING:
    from mpc_core.context import Context
    from mpc_core.tensor import SharedTensor


def rotate_half(B, x: Value) -> Value:
    """[-x2, x1] for x = [x1, x2] split in halves along the last axis (Hugging Face's rotary layout)."""
    half = x.shape[-1] // 2
    return B.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class PlainDecoderBackend(PlainBackend):
    """float64 reference for the decoder layers (exact RMSNorm, SiLU and rotations).

    RMSNorm is the secure function's own float64 form (:func:`~mpc_core.functions.rmsnorm.rms_norm_reference`:
    mean squares floored at the domain's lower end, rows above its upper end refused), so a model or input
    the secure run could not serve is found in plaintext first.
    """

    def __init__(
        self, weights: Mapping[str, np.ndarray], ms_domain: tuple[float, float] = RMSNORM_MS_DOMAIN
    ) -> None:
        super().__init__(weights)
        self.ms_domain = ms_domain

    def project(self, x, name):
        w = self.param(f"{name}.weight")
        return _rows(x, lambda x2: x2 @ w)

    def project_many(self, x, names):
        return [self.project(x, n) for n in names]

    def project_columns(self, x, name, columns):
        w = self.param(f"{name}.weight")[:, np.asarray(columns, dtype=np.int64)]
        return _rows(x, lambda x2: x2 @ w)

    def rms_norm(self, x, name, eps):
        try:
            return rms_norm_reference(x, self.param(f"{name}.weight"), eps, self.ms_domain)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def silu(self, x):
        return silu_reference(x)

    def rotate(self, x, cos, sin):
        return x * cos + rotate_half(self, x) * sin


class SecureDecoderBackend(SecureBackend):
    """Shares and :mod:`mpc_core.functions` for the decoder layers, in one participant's context.

    ``ms_domain`` is the domain of RMSNorm's mean square + eps (the rsqrt's octave domain): a model whose
    rows leave it gets wrong results, so it is configuration the servers agree on, not a guess at run time.
    """

    def __init__(
        self,
        ctx: Context,
        weights: Mapping[str, SharedTensor],
        ms_domain: tuple[float, float] = RMSNORM_MS_DOMAIN,
    ) -> None:
        super().__init__(ctx, weights)
        self.ms_domain = ms_domain

    def _fused_weight(self, names: Sequence[str], columns: Sequence[int] | None = None):
        from mpc_core.tensor import SharedTensor

        cols = None if columns is None else np.asarray(columns, dtype=np.int64)
        key = "+".join(names) + ("" if cols is None else f"[{','.join(str(int(c)) for c in cols)}]")
        if key not in self._fused:
            ws = [self.param(f"{n}.weight") for n in names]
            if cols is not None:
                ws = [w[:, cols] for w in ws]
            w = ws[0] if len(ws) == 1 else SharedTensor.concatenate(ws, axis=1)
            self._fused[key] = (w.fixed(key), None, [int(wi.shape[1]) for wi in ws])
        w, _, widths = self._fused[key]
        return w, widths

    def project(self, x, name):
        return self.project_many(x, [name])[0]

    def project_many(self, x, names):
        """One product x @ [W_1 | W_2 | ...] split into the layers' outputs."""
        with self.ctx.op("linear"):
            w, widths = self._fused_weight(list(names))
            y = _rows(x, lambda x2: x2 @ w)
            out, start = [], 0
            for width in widths:
                out.append(y[..., start : start + width])
                start += width
            return out

    def project_columns(self, x, name, columns):
        with self.ctx.op("linear"):
            w, _ = self._fused_weight([name], columns)
            return _rows(x, lambda x2: x2 @ w)

    def rms_norm(self, x, name, eps):
        from mpc_core.functions.rmsnorm import rms_norm

        with self.ctx.op("rmsnorm"):
            return rms_norm(x, self.param(f"{name}.weight"), eps, ms_domain=self.ms_domain)

    def silu(self, x):
        from mpc_core.functions.silu import silu

        with self.ctx.op("silu"):
            return silu(x)

    def rotate(self, x, cos, sin):
        """x cos + rotate_half(x) sin with cos, sin encoded as ring integers round(t 2^f): exact local
        products, then one truncation (error: half an ulp of each table entry times |x|, plus one ulp)."""
        f = self.ctx.fp.frac_bits
        c = np.rint(np.asarray(cos, dtype=np.float64) * (1 << f)).astype(np.int64)
        s = np.rint(np.asarray(sin, dtype=np.float64) * (1 << f)).astype(np.int64)
        with self.ctx.op("rotary"):
            return (x * c + rotate_half(self, x) * s).truncate(f)
