"""A server's view of the shared model: the public manifest and its own share file, nothing else.

The model owner's folder (``secp-share-model``) holds ``manifest.json`` (public: suite, fixed point,
tensor names and shapes, and the SHA-256 of every party's share file) and one safetensors file per
compute party.  A compute party opens exactly the file the manifest lists for its participant number,
checks its SHA-256 before parsing it, and checks that it holds exactly the manifest's tensors with the
suite's slot axis.  The 2pc dealer reads the manifest only (it needs shapes, never shares).  Other
parties' files are never opened, so a deployment may mount only a party's own file.

The manifest format is the one ``mpc_core.nn.manifest.ShareManifest`` writes (``format``,
``suite``, ``fixed_point.frac_bits``, ``tensors``, ``party_files[{party, file, sha256, bytes}]``);
this module reads only those fields so that the server does not depend on the model code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpc_core.ring import RING_DTYPE
from mpc_core.suites import SUITES

if TYPE_CHECKING:
    from mpc_core.context import Context

MANIFEST_NAME = "manifest.json"
SLOTS = {name: cls.slots for name, cls in SUITES.items()}  # ring words per element, per suite


class ModelError(RuntimeError):
    """The model folder is missing, inconsistent with the cluster, or its share file fails its hash."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
        manifest = json.loads(raw)
        m_suite = manifest["suite"]
        m_frac = int(manifest["fixed_point"]["frac_bits"])
        shapes = {str(k): tuple(int(d) for d in v) for k, v in manifest["tensors"].items()}
        files = {int(e["party"]): e for e in manifest["party_files"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{manifest_path} is not a share manifest ({type(exc).__name__}: {exc})") from None
    if m_suite != suite:
        raise ModelError(f"the model in {folder} was shared for suite {m_suite}, the cluster runs {suite}")
    if m_frac != frac_bits:
        raise ModelError(f"the model uses {m_frac} fractional bits, the cluster {frac_bits}")
    shares = None
    if holds_shares:
        shares = _load_own_shares(folder, participant, files, shapes, SLOTS[suite])
    return LoadedModel(
        folder=folder,
        digest=hashlib.sha256(raw).hexdigest(),
        suite=suite,
        frac_bits=frac_bits,
        shapes=shapes,
        shares=shares,
        manifest=manifest,
    )


def _load_own_shares(
    folder: Path,
    participant: int,
    files: Mapping[int, Mapping],
    shapes: Mapping[str, tuple[int, ...]],
    slots: int,
) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    entry = files.get(participant)
    if entry is None:
        raise ModelError(f"the manifest lists no share file for participant {participant}")
    name = str(entry["file"])
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or "/" in name:
        raise ModelError(f"share file name {name!r} must name a file inside {folder}")
    if not path.is_file():
        raise ModelError(f"share file {name} for participant {participant} is missing in {folder}")
    if sha256_file(path) != entry["sha256"]:
        raise ModelError(
            f"share file {name} does not match the SHA-256 in the manifest (corrupt or replaced)"
        )
    try:
        shares = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"share file {name} is unreadable ({type(exc).__name__})") from None
    if set(shares) != set(shapes):
        raise ModelError(f"share file {name} does not hold exactly the tensors the manifest lists")
    for key, share in shares.items():
        if share.dtype != RING_DTYPE or share.shape != (slots, *shapes[key]):
            raise ModelError(
                f"share {key!r} in {name} is {share.dtype}{share.shape}, not uint64{(slots, *shapes[key])}"
            )
    return shares
