"""The public manifest of a shared model (``manifest.json``), written by ``secp-share-model``.

It is public: architecture, config, tensor names and shapes, fixed-point parameters, the suite, and the
SHA-256 of each party's share file (so a server can check it loaded the file the model owner wrote).
It holds no share and nothing derived from a weight value.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mpc_core.nn.adapted import AdaptationRecord
from mpc_core.nn.config import EncoderConfig
from mpc_core.suites import SuiteName

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


class ShareManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["secp-shares/1"] = FORMAT
    arch: Literal["bert", "roberta"]
    config: EncoderConfig
    suite: SuiteName
    fixed_point: FixedPointSpec
    #: Canonical name -> shape of every secret-shared tensor (shares add a leading slot axis).
    tensors: dict[str, list[int]]
    party_files: list[PartyFile]
    public: PublicFiles
    source: str = ""
    #: The attention mode the model owner adapted the checkpoint to, and its measured fidelity (None: a
    #: plain softmax checkpoint; random-feature modes are then of unknown fidelity).
    attention: AdaptationRecord | None = None

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
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
