"""A server's view of the shared model: the public manifest and its own share file, nothing else.

The model owner's folder (``secp-share-model``) holds ``manifest.json`` (public: suite, fixed point,
tensor names and shapes, and the SHA-256 of every party's share file) and one safetensors file per
compute party.  A compute party opens exactly the file the manifest lists for its participant number,
checks its SHA-256 before parsing it, and checks that it holds exactly the manifest's tensors with the
suite's slot axis.  The 2pc dealer reads the manifest only (it needs shapes, never shares).  Other
parties' files are never opened, so a deployment may mount only a party's own file.

The manifest and the share file are read by the roles' one reader, :mod:`contract.manifest`
(:class:`~contract.manifest.ShareIndex`: ``suite``, ``fixed_point.frac_bits``, ``tensors``,
``party_files``, nothing about the architecture; :func:`~contract.manifest.read_share_file`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contract.manifest import MANIFEST_NAME, ShareFileError, ShareIndex, read_share_file
from mpc_core.suites import suite_class

if TYPE_CHECKING:
    from mpc_core.context import Context


class ModelError(RuntimeError):
    """The model folder is missing, inconsistent with the cluster, or its share file fails its hash."""


class ModelTensors(dict):
    """Name -> SharedTensor of one job's context, with the public model description at ``.loaded``."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.loaded = loaded


@dataclass(frozen=True)
class LoadedModel:
    """One participant's model: public shapes, the manifest's digest, and its own shares (None: dealer)."""

    folder: Path
    digest: str  # sha256 of manifest.json: what a job names to say which model it means
    suite: str
    frac_bits: int
    shapes: Mapping[str, tuple[int, ...]]
    shares: Mapping[str, np.ndarray] | None = field(repr=False)
    manifest: Mapping = field(repr=False)

    def wrap(self, ctx: Context) -> ModelTensors:
        """This participant's shares as SharedTensors of ``ctx`` (weights marked as fixed operands)."""
        from mpc_core.tensor import SharedTensor

        out = ModelTensors(self)
        for name, shape in self.shapes.items():
            share = None if self.shares is None else self.shares[name]
            tensor = SharedTensor.from_share(ctx, share, shape)
            is_weight = name.endswith(".weight") and len(shape) == 2 and not name.startswith("emb.")
            out[name] = tensor.fixed(name) if is_weight else tensor
        return out


def load_model(
    folder: Path, *, participant: int, holds_shares: bool, suite: str, frac_bits: int
) -> LoadedModel:
    """Read the manifest, and (compute parties) this participant's own share file, hash-checked."""
    manifest_path = folder / MANIFEST_NAME
    try:
        raw = manifest_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {manifest_path}: {exc.strerror}") from None
    try:
        index = ShareIndex.parse(raw)
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ModelError(f"{manifest_path} is not a share manifest ({type(exc).__name__}: {exc})") from None
    m_suite, m_frac, shapes = index.suite, index.fixed_point.frac_bits, index.shapes()
    if m_suite != suite:
        raise ModelError(f"the model in {folder} was shared for suite {m_suite}, the cluster runs {suite}")
    if m_frac != frac_bits:
        raise ModelError(f"the model uses {m_frac} fractional bits, the cluster {frac_bits}")
    shares = None
    if holds_shares:
        try:
            entry = index.party_file(participant)
            shares = read_share_file(folder, entry, participant, shapes, suite_class(suite).slots)
        except ShareFileError as exc:
            raise ModelError(str(exc)) from None
    return LoadedModel(
        folder=folder,
        digest=hashlib.sha256(raw).hexdigest(),
        suite=suite,
        frac_bits=frac_bits,
        shapes=shapes,
        shares=shares,
        manifest=manifest,
    )
