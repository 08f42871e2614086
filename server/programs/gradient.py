"""``gradient_tuning``: secure SFT and secure gradient prompt tuning, one Adam step per batch, with
server-side checkpoints of the trained state.

The comparison baselines of the paper run here on the real cluster beside the forward-only
``prompt_tuning`` program.  Each batch is one step of :class:`mpc_core.nn.grad.tuning.PromptTuning`
(``method="prompt"``: Adam on a soft prompt [1, L, H] through the frozen shared encoder) or
:class:`~mpc_core.nn.grad.tuning.FullFineTuning` (``method="sft"``: Adam on every encoder tensor).

Inputs (secret-shared by the data owner, fixed point), parameters :class:`proto.contracts.GradientParams`:

* ``<split>.x`` [n, T, H] and ``<split>.y`` [n, C]: this step's examples (embedding-layer outputs) and
  one-hot labels;
* ``anchors.x`` [C, T', H]: the label descriptions, at a fresh job's first batch only (encoded once with
  the model as loaded, then part of the trained state: SFT's head does not follow the updated encoder);
* ``prompt`` [1, L, H]: the initial prompt, at a fresh ``method="prompt"`` job's first batch only.

Output: ``loss`` [1] (the batch's loss before the update: all the data owner learns), and with
``output_prompt`` the prompt after the update (``method="prompt"`` only; SFT's weights never leave the
servers).  The trained tensors, Adam's moments and the anchors stay in the job's state as shares.

Checkpoints: ``checkpoint=<id>`` makes every participant write its own shares of that state (plus the
public step count and a digest of the public configuration) to ``<state_dir>/<id>.ckpt.npz`` in its own
folder (temporary file, fsync, rename: a crash leaves the previous checkpoint or none, never half of one).
A new job's first batch with ``resume={checkpoint, step, job}`` starts from it: each participant refuses
in its plan, changing nothing, unless it holds that checkpoint, written by that job at that step under the
same configuration; at the first message the participants also compare a digest of what they resume and
abort if they differ.  The 2pc dealer holds no shares: its checkpoint holds the public part only.

The job's *public* progress (steps done, prompt length, classes, configuration digest) is kept on the
program instance (one per job, :meth:`GradientTuning.for_job`) so that the plan can check each batch
against it; only a completed batch updates it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpc_core.nn.heads import SimilarityHead
from proto.contracts import GradientParams, padding_mask
from server.programs.base import PlanError, Program, Shape
from server.programs.tuning import MAX_SEQUENCES, PromptTuning, _padding, _pool_mask_without

CHECKPOINT_FORMAT = "secp-gradient-checkpoint/1"
CHECKPOINT_SUFFIX = ".ckpt.npz"
META_KEY = "__meta__"
#: Largest metadata record read from a checkpoint file (it lists tensor names and shapes).
MAX_META_BYTES = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not match what is asked (the message says which)."""


@dataclass(frozen=True)
class SecretSimilarityHead(SimilarityHead):
    """The similarity head of :mod:`mpc_core.nn.grad` with *secret* anchors: ``anchors`` are shares
    [C, H] of scale * unit anchor, ``scale`` is the integer 1 (an exact ring product), so
    ``unit @ (scale * anchors.T)`` is the plaintext head's product on shares."""

    def __post_init__(self) -> None:  # the anchors were normalised on shares; nothing to do in the clear
        return None


# ---------------------------------------------------------------------------------------------- files
def _shares_digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class CheckpointStore:
    """One server's checkpoint files (its own folder; nothing here is readable by another participant)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def writable(self) -> bool:
        """Whether a checkpoint can be written here (the folder, or the nearest folder above it that
        exists, is writable): checked in the plan, so a read-only deployment refuses before any step."""
        folder = self.folder
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)

    def path(self, checkpoint: str) -> Path:
        return self.folder / f"{checkpoint}{CHECKPOINT_SUFFIX}"

    def write(self, checkpoint: str, meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
        """Write atomically: a temporary file in the same folder, fsync, rename over the old one, fsync
        the folder.  ``meta`` gets the shares' SHA-256 (checked when the checkpoint is loaded)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        meta = {**meta, "shares_sha256": _shares_digest(arrays)}
        payload = {f"t/{k}": np.ascontiguousarray(v) for k, v in arrays.items()}
        payload[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{checkpoint}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **payload)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            target = self.path(checkpoint)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return target

    def read_meta(self, checkpoint: str, who: str) -> dict[str, Any]:
        """The public record of a checkpoint (cheap: the shares are not read)."""
        path = self.path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{who} holds no checkpoint {checkpoint!r} in its state directory")
        try:
            with np.load(path, allow_pickle=False) as npz:
                raw = npz[META_KEY]
                if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_META_BYTES:
                    raise ValueError("malformed metadata record")
                meta = json.loads(raw.tobytes())
        except (OSError, ValueError, KeyError) as exc:
            why = type(exc).__name__
            raise CheckpointError(f"{who} cannot read checkpoint {checkpoint!r}: {why}") from None
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{who}'s checkpoint {checkpoint!r} is not a {CHECKPOINT_FORMAT} file")
        return meta

    def load(self, checkpoint: str, who: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The record and the shares, checked against the SHA-256 written with them."""
        meta = self.read_meta(checkpoint, who)
        try:
            with np.load(self.path(checkpoint), allow_pickle=False) as npz:
                arrays = {k[2:]: npz[k] for k in npz.files if k.startswith("t/")}
        except (OSError, ValueError) as exc:
            why = type(exc).__name__
            raise CheckpointError(f"{who} cannot read checkpoint {checkpoint!r}: {why}") from None
        if _shares_digest(arrays) != meta.get("shares_sha256"):
            raise CheckpointError(f"{who}'s checkpoint {checkpoint!r} is corrupt (share digest mismatch)")
        return meta, arrays


# ---------------------------------------------------------------------------------------------- program
@dataclass
class Progress:
    """A job's public progress (the same on every participant): what the next batch's plan checks."""

    step: int = 0  # Adam steps done (including those of the checkpoint resumed)
    started: bool = False
    config_digest: str = ""
    classes: int = 0
    prompt_len: int = 0
    resumed: dict[str, Any] = field(default_factory=dict)


def config_digest(params: GradientParams, classes: int, prompt_len: int, hidden: int, model: str) -> str:
    """SHA-256 of the public configuration a job and every job resuming its checkpoints must share."""
    fixed = {
        "method": params.method,
        "adam": [params.lr, params.beta1, params.beta2, params.eps, params.grad_max, params.loss_scale],
        "head": [params.head, params.scale, classes],
        "loss": params.loss,
        "prompt_len": prompt_len,
        "hidden": hidden,
        "model": model,
    }
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


def adam_config(params: GradientParams):
    from mpc_core.nn.grad.adam import AdamConfig

    return AdamConfig(
        lr=params.lr, beta1=params.beta1, beta2=params.beta2, eps=params.eps, grad_max=params.grad_max
    )


class GradientTuning(Program):
    """One instance per job (:meth:`for_job`): its checkpoint store (this server's state directory), the
    job's id (recorded in the checkpoints it writes) and the job's public progress, which the plan of each
    batch checks; the shares live in the job's ``state``."""

    name = "gradient_tuning"
    Params = GradientParams
    uses_model = True

    def __init__(self, store: CheckpointStore | None = None, job_id: str = "") -> None:
        self.store = store
        self.job_id = job_id
        self.progress = Progress()

    def for_job(self, job_id: str, state_dir: Path | None) -> GradientTuning:
        return GradientTuning(None if state_dir is None else CheckpointStore(state_dir), job_id)

    # ------------------------------------------------------------------ plan
    def plan(self, inputs: Mapping[str, Shape], params: GradientParams, model) -> dict[str, Shape]:
        from mpc_core.nn.backend import PlainBackend
        from mpc_core.nn.grad.adam import Adam

        cfg = PromptTuning.encoder_config(model)
        progress = self.progress
        fresh = not progress.started and params.resume is None
        if params.resume is not None and progress.started:
            raise PlanError("resume is only accepted at a job's first batch")
        if params.output_prompt and params.method != "prompt":
            raise PlanError("output_prompt is for method 'prompt' only: SFT's weights stay on the servers")
        if math.log2(params.loss_scale) != round(math.log2(params.loss_scale)):
            raise PlanError(f"loss_scale must be a power of two, got {params.loss_scale:g}")
        try:
            Adam(PlainBackend({}), adam_config(params), params.loss_scale)
        except ValueError as exc:
            raise PlanError(f"invalid Adam settings: {exc}") from None
        split = params.split
        wanted = {f"{split}.x", f"{split}.y"}
        if fresh:
            wanted.add("anchors.x")
            if params.method == "prompt":
                wanted.add("prompt")
        if set(inputs) != wanted:
            when = "a fresh job's first batch" if fresh else "a resumed or later batch"
            raise PlanError(f"gradient_tuning at {when} takes inputs {sorted(wanted)}, got {sorted(inputs)}")
        x, y = inputs[f"{split}.x"], inputs[f"{split}.y"]
        if len(x) != 3 or x[2] != cfg.hidden or x[1] > cfg.max_positions:
            raise PlanError(f"{split}.x must be [n, T, {cfg.hidden}] with T <= {cfg.max_positions}, got {x}")
        n, t, _ = x
        if n > MAX_SEQUENCES:
            raise PlanError(f"{n} examples exceed {MAX_SEQUENCES} sequences per batch")
        if fresh:
            anchors = inputs["anchors.x"]
            if len(anchors) != 3 or anchors[2] != cfg.hidden or anchors[1] > cfg.max_positions:
                raise PlanError(f"anchors.x must be [C, T', {cfg.hidden}], got {anchors}")
            classes = anchors[0]
            if classes < 2:
                raise PlanError("the similarity head needs at least two anchors")
            _padding(params.anchor_lengths, (anchors[0], anchors[1]), "anchor_lengths")
            prompt_len = 0
            if params.method == "prompt":
                prompt = inputs["prompt"]
                if len(prompt) != 3 or prompt[0] != 1 or prompt[2] != cfg.hidden:
                    raise PlanError(f"prompt must be [1, L, {cfg.hidden}], got {prompt}")
                prompt_len = prompt[1]
        elif params.resume is not None:
            classes, prompt_len = self._check_resume(params, cfg.hidden, model)
        else:
            classes, prompt_len = progress.classes, progress.prompt_len
        if prompt_len + 2 > t:
            raise PlanError(f"{prompt_len} prompt rows do not fit sequences of {t} tokens")
        if tuple(y) != (n, classes):
            raise PlanError(f"{split}.y must be one-hot [{n}, {classes}], got {y}")
        mask = _padding(params.lengths, (n, t), "lengths")
        _pool_mask_without(params.pool_exclude, mask)
        digest = config_digest(params, classes, prompt_len, cfg.hidden, _model_digest(model))
        if progress.started and digest != progress.config_digest:
            raise PlanError("the method, Adam settings, loss scale and head scale are fixed for a job")
        if params.checkpoint is not None and (self.store is None or not self.store.writable()):
            raise PlanError(
                "this server has no writable state directory (state_dir): it cannot write checkpoints"
            )
        outputs: dict[str, Shape] = {"loss": (1,)}
        if params.output_prompt:
            outputs["prompt"] = (1, prompt_len, cfg.hidden)
        return outputs

    def _check_resume(self, params: GradientParams, hidden: int, model) -> tuple[int, int]:
        """This participant's checkpoint must be the one named, at the step named, same configuration."""
        resume = params.resume
        if self.store is None:
            raise PlanError("this server has no state directory: it holds no checkpoint to resume")
        try:
            meta = self.store.read_meta(resume.checkpoint, "this server")
        except CheckpointError as exc:
            raise PlanError(str(exc)) from None
        if meta.get("step") != resume.step or meta.get("job") != resume.job:
            raise PlanError(
                f"checkpoint {resume.checkpoint!r} here holds step {meta.get('step')} of job "
                f"{meta.get('job')!r}, not step {resume.step} of job {resume.job!r}"
            )
        try:
            classes, prompt_len = int(meta.get("classes", 0)), int(meta.get("prompt_len", 0))
        except (TypeError, ValueError):
            raise PlanError(f"checkpoint {resume.checkpoint!r} here has a malformed record") from None
        digest = config_digest(params, classes, prompt_len, hidden, _model_digest(model))
        if meta.get("config_digest") != digest or meta.get("method") != params.method:
            raise PlanError(
                f"checkpoint {resume.checkpoint!r} was written with another method, model or Adam settings"
            )
        return classes, prompt_len

    # ------------------------------------------------------------------ run
    def run(self, ctx, inputs, params: GradientParams, model, state):
        from mpc_core.nn import SecureBackend

        cfg = state.get("config")
        if cfg is None:
            cfg = state["config"] = PromptTuning.encoder_config(model.loaded)
        digest_model = _model_digest(model.loaded)
        if "tuner" not in state:
            if params.resume is not None:
                self._resume(ctx, params, model, cfg, state)
            else:
                backend = SecureBackend(ctx, model)
                head = PromptTuning._anchor_head(ctx, backend, cfg, inputs["anchors.x"], params, state)
                anchors = head.anchors_t.T * params.scale  # [C, H]: scale * unit anchors, on shares
                prompt = inputs.get("prompt")
                state["tuner"] = self._tuner(ctx, params, model, cfg, anchors, prompt)
                state["anchors"] = anchors
                self.progress.classes = head.classes
                self.progress.prompt_len = 0 if prompt is None else prompt.shape[1]
        tuner = state["tuner"]
        examples, onehot = inputs[f"{params.split}.x"], inputs[f"{params.split}.y"]
        mask = padding_mask(params.lengths, examples.shape[1])
        pool = _pool_mask_without(params.pool_exclude, mask)
        with ctx.op("gradient_step"):
            loss = tuner.step(examples, onehot, mask, pool_mask=pool)
        progress = self.progress
        progress.step += 1
        progress.started = True
        progress.config_digest = config_digest(
            params, progress.classes, progress.prompt_len, cfg.hidden, digest_model
        )
        if params.checkpoint is not None:
            self._save(ctx, params, state, digest_model)
        outputs = {"loss": loss}
        if params.output_prompt:
            outputs["prompt"] = tuner.prompt
        return outputs

    @staticmethod
    def _tuner(ctx, params: GradientParams, model, cfg, anchors, prompt, weights=None):
        from mpc_core.nn import SecureBackend
        from mpc_core.nn.grad.tuning import FullFineTuning
        from mpc_core.nn.grad.tuning import PromptTuning as PromptSteps

        head = SecretSimilarityHead(anchors, scale=1)
        if params.method == "prompt":
            backend = SecureBackend(ctx, model)
            return PromptSteps(backend, cfg, head, prompt, adam_config(params), params.loss_scale)
        backend = SecureBackend(ctx, model if weights is None else weights)
        return FullFineTuning(backend, cfg, head, adam_config(params), params.loss_scale)

    @staticmethod
    def _trained(params: GradientParams, tuner) -> dict[str, Any]:
        from mpc_core.nn.grad import encoder_weight

        if params.method == "prompt":
            return {"prompt": tuner.prompt}
        return {n: v for n, v in tuner.weights.items() if encoder_weight(n)}

    def _save(self, ctx, params: GradientParams, state, model_digest: str) -> None:
        """Write this participant's shares of the trained state (the dealer: the public record only)."""
        tuner, adam = state["tuner"], state["tuner"].adam
        tensors = {f"trained/{n}": v for n, v in self._trained(params, tuner).items()}
        tensors.update({"adam/m": adam.m, "adam/v": adam.v, "anchors": state["anchors"]})
        meta = {
            "format": CHECKPOINT_FORMAT,
            "checkpoint": params.checkpoint,
            "job": self.job_id,
            "step": self.progress.step,
            "participant": ctx.participant,
            "suite": ctx.suite.name,
            "frac_bits": ctx.fp.frac_bits,
            "method": params.method,
            "config_digest": self.progress.config_digest,
            "classes": self.progress.classes,
            "prompt_len": self.progress.prompt_len,
            "adam_names": list(adam.names),
            "tensors": {n: {"shape": list(v.shape), "scale": v.scale} for n, v in tensors.items()},
        }
        arrays = {} if ctx.is_dealer else {n: np.asarray(v.data) for n, v in tensors.items()}
        self.store.write(params.checkpoint, meta, arrays)

    def _resume(self, ctx, params: GradientParams, model, cfg, state) -> None:
        """Rebuild the tuner from this participant's checkpoint, after checking every participant
        resumes the same one (one round: a digest of the public record to every peer)."""
        from mpc_core.nn import SecureBackend
        from mpc_core.tensor import SharedTensor
        from mpc_core.transport.base import ProtocolError

        resume = params.resume
        who = f"participant {ctx.participant}"
        try:
            meta, arrays = self.store.load(resume.checkpoint, who)
        except CheckpointError as exc:
            raise ProtocolError(str(exc)) from None
        if (meta.get("step"), meta.get("job")) != (resume.step, resume.job):  # replaced since the plan
            raise ProtocolError(f"{who}'s checkpoint {resume.checkpoint!r} changed after the plan")
        keys = ("checkpoint", "job", "step", "config_digest", "suite", "frac_bits")
        public = {k: meta.get(k) for k in keys}
        mine = np.frombuffer(hashlib.sha256(json.dumps(public, sort_keys=True).encode()).digest(), np.uint8)
        peers = [p for p in range(ctx.suite.participants) if p != ctx.participant]
        with ctx.op("resume"):
            theirs = ctx.exchange({p: mine for p in peers}, {p: ((32,), np.uint8) for p in peers}, "resume")
        if any(not np.array_equal(theirs[p], mine) for p in peers):
            raise ProtocolError(f"the participants hold different checkpoints {resume.checkpoint!r}")
        if (meta.get("participant"), meta.get("suite"), meta.get("frac_bits")) != (
            ctx.participant,
            ctx.suite.name,
            ctx.fp.frac_bits,
        ):
            raise ProtocolError(
                f"{who}'s checkpoint {resume.checkpoint!r} belongs to another participant or suite"
            )

        def tensor(name: str) -> SharedTensor:
            info = meta["tensors"][name]
            share = None if ctx.is_dealer else arrays[name]
            return SharedTensor.from_share(ctx, share, tuple(info["shape"]), int(info["scale"]))

        step = int(meta["step"])
        anchors = tensor("anchors")
        trained = {n[len("trained/") :]: tensor(n) for n in meta["tensors"] if n.startswith("trained/")}
        if params.method == "prompt":
            tuner = self._tuner(ctx, params, model, cfg, anchors, trained["prompt"])
        else:
            from mpc_core.nn.grad.ops import grad_ops

            ops = grad_ops(SecureBackend(ctx, model))
            weights = dict(model)
            for name, value in trained.items():
                weights[name] = ops.mark_updated(name, value, step)
            tuner = self._tuner(ctx, params, model, cfg, anchors, None, weights)
            tuner.steps = step
        adam = tuner.adam
        adam.t, adam.m, adam.v = step, tensor("adam/m"), tensor("adam/v")
        adam.names = list(meta["adam_names"])
        state["tuner"], state["anchors"] = tuner, anchors
        progress = self.progress
        progress.step = step
        progress.classes, progress.prompt_len = int(meta["classes"]), int(meta["prompt_len"])
        progress.resumed = public


def _model_digest(model) -> str:
    return str(getattr(model, "digest", ""))
