"""Split a local Hugging Face checkpoint into one share file per party, a public manifest and public files.

Output folder (written atomically: built in a hidden temporary folder next to it, then renamed, so an
error leaves nothing behind)::

    manifest.json                architecture, config, shapes, fixed-point parameters, suite, SHA-256s
    party0.safetensors ...       uint64 shares of every tensor after the embedding layer, one file per
                                 compute party (2 in 2pc, 3 in 3pc); each file holds only that party's
                                 share (1 slot in 2pc, 2 replicated slots in 3pc)
    public/embeddings.safetensors   the embedding layer (word, position, token type, LayerNorm)
    public/config.json, tokenizer files

Shares come from AES-CTR keyed by fresh per-tensor seeds from the operating system's cryptographic
source (:func:`mpc_core.prg.fresh_seed`), one party file at a time (:func:`share_tensors_for_party`).
Any one party file is uniformly distributed and independent of the weights; the party files together
reconstruct them (x = sum of the shares mod 2^64; in 3pc any two files hold all three shares).
Nothing here prints or logs a weight or a share.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from contract.manifest import (
    FixedPointSpec,
    PartyFile,
    PublicFiles,
    ShareManifest,
    party_file_tensors,
    sha256_file,
)
from model_owner.checkpoints import TOKENIZER_FILES, is_gguf, read_checkpoint
from mpc_core.nn.adapted import read_record
from mpc_core.nn.llama_weights import gguf_to_folder
from mpc_core.nn.weights import (
    CheckpointError,
    split_public,
)
from mpc_core.prg import PRG, fresh_seed
from mpc_core.ring import FixedPoint
from mpc_core.suites import SUITES, suite_class

PARTIES = {name: len(cls.compute_parties) for name, cls in SUITES.items()}  # share files per suite


def party_file_name(party: int) -> str:
    return f"party{party}.safetensors"


def _encode(fp: FixedPoint, name: str, value: np.ndarray) -> np.ndarray:
    try:
        return fp.encode(value)
    except ValueError as exc:
        raise CheckpointError(f"tensor {name} cannot be encoded in fixed point: {exc}") from None


def share_tensors(
    tensors: Mapping[str, np.ndarray], suite: str, fp: FixedPoint, prg: PRG
) -> list[dict[str, np.ndarray]]:
    """Fixed-point encode every tensor and split it: ``result[party][name]`` is that party's share."""
    cls = suite_class(suite)
    out: list[dict[str, np.ndarray]] = [{} for _ in range(PARTIES[suite])]
    for name, value in tensors.items():
        for party, share in enumerate(cls.split(_encode(fp, name, value), prg)):
            out[party][name] = np.ascontiguousarray(share)
    return out


def share_tensors_for_party(
    tensors: Mapping[str, np.ndarray], suite: str, fp: FixedPoint, seeds: Mapping[str, bytes], party: int
) -> dict[str, np.ndarray]:
    """One party's shares only, re-derived from a per-tensor secret seed (the same for every party).

    Splitting tensor t with a PRG keyed by ``seeds[t]`` is deterministic, so calling this for each party
    in turn gives a consistent sharing while holding one party's shares in memory at a time (a 3pc
    RoBERTa-large would otherwise need all six share slots, about 15 GB, at once).  The seeds come from
    the operating system's cryptographic source and never leave this process.
    """
    cls = suite_class(suite)
    return {
        name: np.ascontiguousarray(cls.split(_encode(fp, name, value), PRG(seeds[name]))[party])
        for name, value in tensors.items()
    }


def _public_array(value: np.ndarray) -> np.ndarray:
    """float32 when that is lossless (checkpoints are float32), float64 otherwise."""
    as32 = value.astype(np.float32)
    return as32 if np.array_equal(as32.astype(np.float64), value) else value


def _prepare_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)


def share_model(
    model_dir: str | Path,
    suite: str,
    out_dir: str | Path,
    frac_bits: int = 16,
    force: bool = False,
) -> ShareManifest:
    """Share the checkpoint ``model_dir`` for ``suite`` into ``out_dir``; returns the manifest written.

    ``model_dir`` is a Hugging Face folder (BERT, RoBERTa or LLaMA family) or a LLaMA-family ``.gguf``
    file, which is dequantised to float32 into a temporary folder first (removed afterwards).
    """
    if suite not in PARTIES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {sorted(PARTIES)}")
    if is_gguf(model_dir):
        _prepare_target(Path(out_dir), force)  # refuse a bad target before the slow conversion
        with tempfile.TemporaryDirectory(prefix=".secp-gguf-") as tmp:
            folder = gguf_to_folder(model_dir, Path(tmp) / "model")
            return _share_folder(folder, suite, out_dir, frac_bits, force, source=Path(model_dir).name)
    return _share_folder(model_dir, suite, out_dir, frac_bits, force)


def _share_folder(
    model_dir: str | Path, suite: str, out_dir: str | Path, frac_bits: int, force: bool, source: str = ""
) -> ShareManifest:
    model_dir, out = Path(model_dir), Path(out_dir)
    fp = FixedPoint(frac_bits)
    cfg, tensors = read_checkpoint(model_dir)
    public, secret = split_public(tensors)
    del tensors
    for name, value in secret.items():  # refuse unencodable weights before anything is written
        _encode(fp, name, value)
    seeds = {name: fresh_seed() for name in secret}
    _prepare_target(out, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        party_files = []
        for party in range(PARTIES[suite]):
            party_shares = share_tensors_for_party(secret, suite, fp, seeds, party)
            path = tmp / party_file_name(party)
            save_file(
                party_shares,
                str(path),
                metadata={"format": "secp-shares/1", "suite": suite, "party": str(party)},
            )
            del party_shares
            party_files.append(
                PartyFile(party=party, file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)
            )
        del seeds
        pub = tmp / "public"
        pub.mkdir()
        save_file({k: _public_array(v) for k, v in public.items()}, str(pub / "embeddings.safetensors"))
        copied = ["embeddings.safetensors"]
        for name in ("config.json", *TOKENIZER_FILES):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, pub / name)
                copied.append(name)
        shapes = {name: list(value.shape) for name, value in secret.items()}
        manifest = ShareManifest(
            arch=cfg.arch,
            config=cfg,
            suite=suite,
            fixed_point=FixedPointSpec(frac_bits=frac_bits),
            tensors=shapes,
            party_files=party_files,
            public=PublicFiles(files=copied),
            source=source or model_dir.resolve().name,
            attention=read_record(model_dir),
        )
        manifest.write(tmp)
        if out.is_dir():
            if force:
                shutil.rmtree(out)
            else:
                out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def reconstruct(folder: str | Path, parties: list[int] | None = None) -> dict[str, np.ndarray]:
    """Decode the weights from the listed party files (all by default): the model owner's own check.

    The additive shares x = x_0 + ... (mod 2^64) are gathered from the files: in 2pc party p holds x_p,
    so both files are needed; in 3pc party p holds (x_p, x_{p+1}), so any two of the three files cover
    all three shares (the replicated scheme's threshold, i.e. the honest-majority assumption).  Raises
    ValueError when the listed files do not cover every share; copies held twice must agree.
    """
    manifest = ShareManifest.read(folder)
    count = PARTIES[manifest.suite]
    parties = list(range(count)) if parties is None else sorted(set(parties))
    files = {p: party_file_tensors(folder, p, manifest) for p in parties}
    fp = FixedPoint(manifest.fixed_point.frac_bits)
    out = {}
    for name in manifest.tensors:
        pieces: dict[int, np.ndarray] = {}
        for p, tensors in files.items():
            for slot, share in enumerate(tensors[name]):
                index = (p + slot) % count
                if index in pieces and not np.array_equal(pieces[index], share):
                    raise ValueError(f"two party files disagree on share {index} of {name}")
                pieces[index] = share
        if len(pieces) < count:
            raise ValueError(
                f"parties {parties} hold only {len(pieces)} of the {count} additive shares: "
                "the weights cannot be reconstructed from them"
            )
        total = sum(pieces.values(), start=np.zeros_like(pieces[0]))
        out[name] = fp.decode(total)
    return out


def read_public_config(folder: str | Path) -> dict:
    """The checkpoint's own config.json as copied to ``public/``."""
    manifest = ShareManifest.read(folder)
    return json.loads((Path(folder) / manifest.public.folder / "config.json").read_text())


def read_public_embeddings(folder: str | Path) -> dict[str, np.ndarray]:
    manifest = ShareManifest.read(folder)
    return load_file(str(Path(folder) / manifest.public.folder / manifest.public.embeddings))
