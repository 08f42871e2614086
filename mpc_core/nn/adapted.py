"""The record of a checkpoint adapted to a random-feature attention mode, and its fidelity policy.

The model owner's ``secp-adapt-model`` writes it next to an adapted plaintext checkpoint
(``secp_attention.json``, with the learned tensors in ``secp_attention.safetensors``); ``secp-share-model``
copies it into the public manifest.  The data owner reads it (from either folder) before a run and refuses
a random-feature mode whose fidelity on the loaded checkpoint is poor or unknown unless told to go on.

The record is public: the attention configuration (mode, feature count, seed: the servers need them
anyway) and aggregate fidelity figures measured on a public corpus.  It holds no weight value.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mpc_core.nn.config import AttentionConfig

RECORD_FILE = "secp_attention.json"
TENSORS_FILE = "secp_attention.safetensors"
#: A mode's fidelity holds when the adapted model's sentence embeddings (mean-pooled, l2-normalised last
#: hidden states, what the similarity head compares) have mean cosine at least this with the original
#: softmax model's on the held-out public corpus.  Measured: softmax 1.0; unadapted rfa/favor below it.
FIDELITY_MIN_COSINE = 0.97


class AttentionFidelity(BaseModel):
    """Plaintext (float64, the reference backend) agreement of a mode with the original softmax model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pooled_cosine_mean: float = Field(ge=-1, le=1)
    pooled_cosine_min: float = Field(ge=-1, le=1)
    hidden_relative_error: float = Field(ge=0, description="|H_mode - H_softmax| / |H_softmax|, last layer")
    floored_denominators: float = Field(ge=0, le=1, description="fraction of rows at the denominator guard")
    sequences: int = Field(gt=0)
    domain_violations: int = Field(
        default=0, ge=0, description="inputs outside a secure function's domain (plaintext, all functions)"
    )
    violated: list[str] = Field(default_factory=list, description="which functions' domains were left")

    def holds(self) -> bool:
        return self.pooled_cosine_mean >= FIDELITY_MIN_COSINE and self.domain_violations == 0


class AdaptationRecord(BaseModel):
    """What ``secp-adapt-model`` did and measured (written into the manifest by ``secp-share-model``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attention: AttentionConfig
    fidelity: AttentionFidelity
    before: AttentionFidelity = Field(description="the same mode on the checkpoint before adaptation")
    source: str = ""
    corpus: str
    trained: list[str]
    steps: int = Field(ge=0)
    seconds: float = Field(ge=0)
    threads: int = Field(gt=0)

    def write(self, folder: str | Path) -> None:
        (Path(folder) / RECORD_FILE).write_text(self.model_dump_json(indent=2) + "\n")


def read_record(folder: str | Path) -> AdaptationRecord | None:
    """The adaptation record of a plaintext checkpoint folder or a shared-model folder (None if none)."""
    folder = Path(folder)
    path = folder / RECORD_FILE
    if path.is_file():
        return AdaptationRecord.model_validate_json(path.read_text())
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return manifest_record(json.loads(manifest.read_text()))
    return None


def fidelity_problem(record: AdaptationRecord | None, mode: str) -> str | None:
    """Why ``mode`` should not run on the checkpoint with ``record`` (None when it may run)."""
    if mode == "softmax":
        return None
    if record is None:
        return (
            f"attention {mode!r}: this checkpoint was not adapted to it, so its fidelity is unknown "
            f"(unadapted random-feature attention loses 6-25 points or is at chance; docs/fidelity.md); "
            f"adapt it first with: secp-adapt-model --attention {mode}"
        )
    if record.attention.mode != mode:
        return (
            f"attention {mode!r}: this checkpoint was adapted to {record.attention.mode!r}, "
            f"its fidelity with {mode!r} is unknown"
        )
    if record.fidelity.domain_violations:
        return (
            f"attention {mode!r}: on the model owner's corpus {record.fidelity.domain_violations} inputs "
            f"left the domains of {', '.join(record.fidelity.violated)}, where the secure functions are wrong"
        )
    if not record.fidelity.holds():
        return (
            f"attention {mode!r}: measured fidelity is poor (sentence-embedding cosine with softmax "
            f"{record.fidelity.pooled_cosine_mean:.3f} < {FIDELITY_MIN_COSINE})"
        )
    return None


def attention_for(mode: str, features: int, record: AdaptationRecord | None) -> AttentionConfig:
    """The attention configuration to run: the recorded one when the checkpoint was adapted to ``mode``
    (its feature count, seed and well-posed form are part of the adapted model), else the plain one."""
    if record is not None and record.attention.mode == mode:
        return record.attention
    return AttentionConfig(mode=mode, features=features)


def manifest_record(manifest: dict) -> AdaptationRecord | None:
    """The adaptation record in a parsed manifest.json (None for a plain softmax checkpoint)."""
    raw = manifest.get("attention")
    return None if raw is None else AdaptationRecord.model_validate(raw)
