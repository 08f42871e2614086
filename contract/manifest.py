"""The public manifest of a shared model (``manifest.json``) and the one reader of its share files.

The manifest is written by ``secp-share-model`` and read by the servers, the data owner and the tests.
It is public: architecture, config, tensor names and shapes, fixed-point parameters, the suite, and the
SHA-256 of each party's share file (so a server can check it loaded the file the model owner wrote).
It holds no share and nothing derived from a weight value.

Two views of one file: :class:`ShareIndex` is what a server needs (suite, fixed point, tensor shapes,
party files) and accepts any manifest that has those fields; :class:`ShareManifest` is the whole
manifest the model owner writes (with the architecture and the public files).  :func:`read_share_file`
is the only code that opens a party's share file: it checks the file's name, its SHA-256, its tensors,
and each share's dtype and slot axis before handing the arrays back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mpc_core.nn.config import EncoderConfig
from mpc_core.nn.llama_config import DecoderConfig
from mpc_core.nn.weights import CheckpointError, is_matrix_weight
from mpc_core.ring import RING_DTYPE
from mpc_core.suites import SuiteName, suite_class

if TYPE_CHECKING:
    from mpc_core.context import Context
    from mpc_core.tensor import SharedTensor

#: The architecture's config, told apart by its ``arch`` field (bert/roberta encoders, llama decoders).
ModelConfig = Annotated[EncoderConfig | DecoderConfig, Field(discriminator="arch")]

MANIFEST_NAME = "manifest.json"
FORMAT = "secp-shares/1"


class FixedPointSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ring_bits: Literal[64] = 64
    frac_bits: int = Field(ge=0, le=40)


class PartyFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    party: int = Field(ge=0, le=2)
    file: str
    sha256: str
    bytes: int


class PublicFiles(BaseModel):
    """The data owner's folder: the public embedding layer, the HF config and the tokenizer files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    folder: str = "public"
    embeddings: str = "embeddings.safetensors"
    files: list[str]


class ShareIndex(BaseModel):
    """The fields of a manifest a server reads: suite, fixed point, tensor shapes and party files.

    Other fields (architecture, config, public files) are ignored, so a server does not depend on the
    model code's description of an architecture.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    suite: str
    fixed_point: FixedPointSpec
    tensors: dict[str, list[int]]
    party_files: list[PartyFile]

    @classmethod
    def parse(cls, raw: bytes) -> ShareIndex:
        """The index of manifest bytes (raises pydantic's ValueError if a field is missing or wrong)."""
        return cls.model_validate_json(raw)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {str(k): tuple(int(d) for d in v) for k, v in self.tensors.items()}

    def party_file(self, party: int) -> PartyFile:
        for pf in self.party_files:
            if pf.party == party:
                return pf
        raise ShareFileError(f"the manifest lists no share file for participant {party}")


class ShareManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["secp-shares/1"] = FORMAT
    arch: Literal["bert", "roberta", "llama"]
    config: ModelConfig
    suite: SuiteName
    fixed_point: FixedPointSpec
    #: Canonical name -> shape of every secret-shared tensor (shares add a leading slot axis).
    tensors: dict[str, list[int]]
    party_files: list[PartyFile]
    public: PublicFiles
    source: str = ""

    def party_file(self, party: int) -> PartyFile:
        for pf in self.party_files:
            if pf.party == party:
                return pf
        raise ValueError(f"the {self.suite} manifest lists no share file for party {party}")

    @classmethod
    def read(cls, folder: str | Path) -> ShareManifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder}: not a shared-model folder")
        return cls.model_validate_json(path.read_text())

    def write(self, folder: str | Path) -> None:
        (Path(folder) / MANIFEST_NAME).write_text(self.model_dump_json(indent=2) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks (share files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ShareFileError(CheckpointError):
    """A party's share file is missing, outside its folder, fails its hash, or holds the wrong tensors."""


def read_share_file(
    folder: str | Path, entry: PartyFile, participant: int, shapes: Mapping[str, tuple[int, ...]], slots: int
) -> dict[str, np.ndarray]:
    """One party's share arrays (uint64, ``[slots, *shape]`` each), checked against the manifest.

    The file must be named inside ``folder``, match the manifest's SHA-256 (checked before parsing),
    hold exactly the manifest's tensors, and each share must be uint64 with the suite's slot axis.
    Raises :class:`ShareFileError` (the message names the file, never a value).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    name = str(entry.file)
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or "/" in name:
        raise ShareFileError(f"share file name {name!r} must name a file inside {folder}")
    if not path.is_file():
        raise ShareFileError(f"share file {name} for participant {participant} is missing in {folder}")
    if sha256_file(path) != entry.sha256:
        raise ShareFileError(
            f"share file {name} does not match the SHA-256 in the manifest (corrupt or replaced)"
        )
    try:
        shares = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ShareFileError(f"share file {name} is unreadable ({type(exc).__name__})") from None
    if set(shares) != set(shapes):
        raise ShareFileError(f"share file {name} does not hold exactly the tensors the manifest lists")
    for key, share in shares.items():
        if share.dtype != RING_DTYPE or share.shape != (slots, *shapes[key]):
            raise ShareFileError(
                f"share {key!r} in {name} is {share.dtype}{share.shape}, not uint64{(slots, *shapes[key])}"
            )
    return shares


def party_file_tensors(
    folder: str | Path, party: int, manifest: ShareManifest | None = None
) -> dict[str, np.ndarray]:
    """One party's share arrays of a model owner's folder (the full manifest is read unless given)."""
    manifest = manifest or ShareManifest.read(folder)
    shapes = {name: tuple(shape) for name, shape in manifest.tensors.items()}
    try:
        entry = manifest.party_file(party)
    except ValueError as exc:
        raise ShareFileError(str(exc)) from None
    return read_share_file(folder, entry, party, shapes, suite_class(manifest.suite).slots)


def load_party_shares(ctx: Context, folder: str | Path) -> dict[str, SharedTensor]:
    """This participant's shares of every secret tensor as SharedTensors (the 2pc dealer gets placeholders).

    Checks suite and fixed-point parameters against the context and the file's hash against the manifest;
    matrix weights are marked ``.fixed(name)`` so their Beaver masks are opened once per context.
    """
    from mpc_core.tensor import SharedTensor

    manifest = ShareManifest.read(folder)
    if manifest.suite != ctx.suite.name:
        raise ValueError(
            f"the model was shared for suite {manifest.suite}, this context runs {ctx.suite.name}"
        )
    if manifest.fixed_point.frac_bits != ctx.fp.frac_bits:
        raise ValueError(
            f"the model was encoded with {manifest.fixed_point.frac_bits} fractional bits, "
            f"this context uses {ctx.fp.frac_bits}"
        )
    shares = None if ctx.is_dealer else party_file_tensors(folder, ctx.participant, manifest)
    out: dict[str, SharedTensor] = {}
    for name, shape in manifest.tensors.items():
        tensor = SharedTensor.from_share(ctx, None if shares is None else shares[name], tuple(shape))
        out[name] = tensor.fixed(name) if is_matrix_weight(name, shape) else tensor
    return out
