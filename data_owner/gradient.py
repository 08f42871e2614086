"""Secure SFT and secure gradient prompt tuning through the cluster: ``secp-tune gradient``.

The comparison baselines of forward-only tuning, run for real: every step is one ``gradient_tuning``
batch (:mod:`server.programs.gradient`, one ``Generate`` call per participant): this process shares one
batch of the task's train split (embedding-layer outputs and one-hot labels; at a fresh job's first step
also the label descriptions and, for ``prompt``, the initial prompt), the servers take one Adam step on
shares, and only the step's loss is reconstructed here.  The trained prompt or weights and Adam's moments
stay on the servers as shares; with ``prompt`` the data owner fetches its prompt (it owns it) at every
checkpoint, SFT's updated weights are never sent to anybody.

Run folder (``--out``)::

    RUN/config.json      the GradientConfig (task, data, model, cluster, method, Adam settings, ...)
    RUN/history.jsonl    one line per step: step, loss, seconds, the job that ran it
    RUN/state.json       the latest server checkpoint: id, step, the job that wrote it (atomic)
    RUN/prompt.npy       method prompt: the prompt [1, L, H] at that checkpoint (the data owner's secret)

Every ``checkpoint_every`` steps (and after the last) every server writes its shares of the trained state
under the run's checkpoint id; ``--resume`` opens a new job that starts from the latest one (every server
checks it holds that step of that job) and redoes the steps after it.  The batch of step s depends on the
seed and s only, so a resumed run sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click
import grpc
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from data_owner.checkpoint import atomic_write_bytes
from data_owner.errors import ClusterUnavailableError, DataOwnerError
from proto.contracts import GradientParams, ResumeFrom, padding_lengths

PROGRAM = "gradient_tuning"
#: Status codes of a request the servers refused (bad parameters, a checkpoint a server lacks).
REFUSALS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})
CONFIG, HISTORY, STATE, PROMPT = "config.json", "history.jsonl", "state.json", "prompt.npy"


class GradientConfig(BaseModel):
    """One gradient run: what to train, on which data and cluster, with which Adam settings."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="built-in task or a task file")
    data_dir: str = Field(description="folder with the train split (train.tsv/.csv/.jsonl)")
    model: str = Field(description="the shared model's folder (secp-share-model output: its public part)")
    cluster: str = Field(description="the cluster file")
    insecure: bool = Field(default=False, description="no TLS (local development only)")
    method: Literal["sft", "prompt"] = Field(
        default="prompt", description="sft: every encoder weight (kept as shares); prompt: a soft prompt"
    )
    steps: int = Field(default=10, ge=1, le=100_000, description="Adam steps in all")
    batch_size: int = Field(default=8, ge=1, le=4096, description="train rows per step")
    prompt_length: int = Field(default=4, ge=1, le=64, description="prompt rows (method prompt)")
    max_length: int = Field(default=64, ge=4, le=4096, description="longest input in tokens")
    lr: float = Field(default=0.05, gt=0, le=1.0, description="Adam's learning rate")
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    eps: float = Field(default=1e-2, ge=1e-6, le=1.0, description="Adam's epsilon (inside the root)")
    grad_max: float = Field(
        default=1.0, gt=0, le=1e4, description="largest gradient entry the fixed-point Adam step serves"
    )
    loss_scale: float = Field(
        default=256.0, ge=1, le=65536, description="gradients are computed times this power of two"
    )
    similarity_scale: float = Field(
        default=20.0, gt=0, le=1000, description="the similarity head's logit scale"
    )
    seed: int = Field(default=0, ge=0, description="picks the batches of every step")
    checkpoint_every: int = Field(
        default=5, ge=1, description="steps between the servers' checkpoints (and after the last)"
    )
    run_id: str = Field(default_factory=lambda: secrets.token_hex(8), pattern=r"^[0-9a-f]{16}$")

    @property
    def checkpoint_id(self) -> str:
        """The servers' checkpoint id of this run (one per run; each checkpoint replaces the last)."""
        return f"gradient-{self.run_id}"


def batch_rows(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The train rows of step ``step`` (1-based): epochs of seeded permutations, cut in order."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step - 1, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(order[pos * batch_size : (pos + 1) * batch_size])


class GradientRun:
    """A run folder and the cluster job that advances it, one step per call."""

    def __init__(self, folder: Path, config: GradientConfig) -> None:
        self.folder = Path(folder)
        self.config = config

    # ------------------------------------------------------------------ the folder
    @classmethod
    def create(cls, folder: Path, config: GradientConfig) -> GradientRun:
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise DataOwnerError(f"{folder} exists and is not empty: choose a new --out, or --resume it")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / CONFIG, config.model_dump_json(indent=2).encode())
        return cls(folder, config)

    @classmethod
    def open(cls, folder: Path) -> GradientRun:
        path = Path(folder) / CONFIG
        if not path.is_file():
            raise DataOwnerError(f"{folder} is not a gradient run folder (no {CONFIG})")
        try:
            return cls(Path(folder), GradientConfig.model_validate_json(path.read_text()))
        except ValidationError as exc:
            raise DataOwnerError(f"{path} is not a valid gradient run configuration: {exc}") from None

    def state(self) -> dict[str, Any]:
        path = self.folder / STATE
        return json.loads(path.read_text()) if path.is_file() else {}

    def history(self) -> list[dict[str, Any]]:
        path = self.folder / HISTORY
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _rewrite_history(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.folder / HISTORY, text.encode())

    # ------------------------------------------------------------------ the data
    def _prepare(self):
        """Task, encoder, train split and anchors (everything the user can get wrong fails here)."""
        from data_owner.data import find_split, load_split
        from data_owner.encode import NO_PLACEHOLDER, Encoder, PublicModel, encode_plain_texts
        from data_owner.task import load_task

        cfg = self.config
        task = load_task(cfg.task)
        data_dir = Path(cfg.data_dir)
        if not data_dir.is_dir():
            raise DataOwnerError(f"data folder not found: {data_dir}")
        examples = load_split(find_split(data_dir, "train"), task)
        if len(examples) < cfg.batch_size:
            raise DataOwnerError(f"the train split has {len(examples)} examples, fewer than --batch-size")
        model = PublicModel.load(Path(cfg.model), need_weights=False)
        prompt = cfg.method == "prompt"
        encoder = Encoder(
            model.tokenizer,
            model.embedding,
            task,
            "similarity",
            cfg.prompt_length if prompt else 0,
            None if prompt else NO_PLACEHOLDER,
            cfg.max_length,
            pool="text",
        )
        split = encoder.encode(examples)
        anchors = encode_plain_texts(model.tokenizer, model.embedding, task.anchors())
        return model, split, anchors

    def _params(self, split, rows: np.ndarray, **extra: Any) -> GradientParams:
        cfg = self.config
        lengths = padding_lengths(split.attention_mask[rows])
        return GradientParams(
            method=cfg.method,
            lengths=lengths,
            pool_exclude=list(split.pool_exclude) or None,
            scale=cfg.similarity_scale,
            lr=cfg.lr,
            beta1=cfg.beta1,
            beta2=cfg.beta2,
            eps=cfg.eps,
            grad_max=cfg.grad_max,
            loss_scale=cfg.loss_scale,
            **extra,
        )

    # ------------------------------------------------------------------ the cluster
    def _open_job(self):
        from data_owner.client import ClusterClient, ClusterError

        path = Path(self.config.cluster)
        if not path.is_file():
            raise DataOwnerError(f"cluster file not found: {path}")
        try:
            client = ClusterClient.from_file(path, insecure=self.config.insecure)
        except (OSError, ValueError) as exc:
            raise DataOwnerError(f"cannot use the cluster file {path}: {exc}") from exc
        try:
            info = client.server_info()
            programs = set.intersection(*(set(r.programs) for r in info.values()))
            if PROGRAM not in programs:
                raise ClusterUnavailableError(f"the cluster in {path} does not run the {PROGRAM!r} program")
            digests = {r.model_digest for r in info.values() if r.role == "party"}
            job = client.open_job(PROGRAM, model_digest=digests.pop() if len(digests) == 1 else "")
        except ClusterError as exc:
            client.close()
            raise ClusterUnavailableError(f"the cluster in {path} is not available: {exc}") from exc
        except BaseException:
            client.close()
            raise
        return client, job

    def run(self, echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
        """Advance the run to ``config.steps`` (from its latest checkpoint, if any); returns a summary."""
        from data_owner.client import ClusterError
        from mpc_core.ring import FixedPoint

        cfg = self.config
        state = self.state()
        done = int(state.get("step", 0))
        if done >= cfg.steps:
            echo(f"{self.folder}: all {cfg.steps} steps are done")
            return self.summary()
        model, split, (anchor_x, anchor_mask) = self._prepare()
        history = [r for r in self.history() if r["step"] <= done]  # steps after the checkpoint are redone
        self._rewrite_history(history)
        client, job = self._open_job()
        fp = FixedPoint(client.config.frac_bits)
        try:
            with job:
                for step in range(done + 1, cfg.steps + 1):
                    rows = batch_rows(len(split), cfg.batch_size, cfg.seed, step)
                    t_max = int(split.attention_mask[rows].sum(1).max())
                    shared = {
                        "train.x": fp.encode(split.embeds[rows, :t_max]),
                        "train.y": fp.encode(split.onehot[rows]),
                    }
                    extra: dict[str, Any] = {}
                    if step == done + 1 and done == 0:  # a fresh job: the head, and the initial prompt
                        shared["anchors.x"] = fp.encode(anchor_x)
                        extra["anchor_lengths"] = padding_lengths(anchor_mask)
                        if cfg.method == "prompt":
                            shared["prompt"] = fp.encode(np.zeros((1, cfg.prompt_length, model.hidden)))
                    elif step == done + 1:
                        extra["resume"] = ResumeFrom(
                            checkpoint=state["checkpoint"], step=done, job=state["job"]
                        )
                    save = step % cfg.checkpoint_every == 0 or step == cfg.steps
                    if save:
                        extra["checkpoint"] = cfg.checkpoint_id
                        extra["output_prompt"] = cfg.method == "prompt"
                    params = self._params(split, rows, **extra)
                    reveal = ["loss"] + (["prompt"] if extra.get("output_prompt") else [])
                    start = time.perf_counter()
                    gen = job.generate(shared, list(shared), params, reveal=reveal)
                    loss = float(gen.reveal_float("loss")[0])
                    seconds = time.perf_counter() - start
                    record = {"step": step, "loss": loss, "seconds": round(seconds, 3), "job": job.job_id}
                    history.append(record)
                    self._rewrite_history(history)
                    if save:
                        if "prompt" in reveal:
                            atomic_write_bytes(self.folder / PROMPT, _npy(gen.reveal_float("prompt")))
                        state = {"checkpoint": cfg.checkpoint_id, "step": step, "job": job.job_id}
                        atomic_write_bytes(self.folder / STATE, json.dumps(state).encode())
                    mark = "  [checkpoint]" if save else ""
                    echo(f"step {step}/{cfg.steps}  loss {loss:.4f}  {seconds:.1f} s{mark}")
        except ClusterError as exc:
            if exc.code in REFUSALS:  # the servers refused the request: nothing ran, nothing to retry
                raise DataOwnerError(f"the cluster refused the step: {exc}") from exc
            raise ClusterUnavailableError(
                f"the cluster failed during the run (continue with --resume): {exc}"
            ) from exc
        finally:
            client.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        history = self.history()
        state = self.state()
        return {
            "run": str(self.folder),
            "method": self.config.method,
            "steps": len(history),
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None,
            "checkpoint": state.get("checkpoint"),
            "checkpoint_step": state.get("step"),
        }


def _npy(value: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, value)
    return buf.getvalue()


def _described(field: str) -> str | None:
    return GradientConfig.model_fields[field].description


def config_option(field: str, *decls: str, **kwargs: Any):
    """An option for a :class:`GradientConfig` field: its help and shown default come from the field (one
    source).  Its click default is None, so that ``--resume`` can tell which settings were given."""
    info = GradientConfig.model_fields[field]
    shown = info.default if info.default is not PydanticUndefined else False
    return click.option(*decls, default=None, show_default=str(shown), help=info.description, **kwargs)


@click.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="run folder (new, or --resume)")
@click.option("--resume", is_flag=True, help="continue the run in OUT from its latest server checkpoint")
@click.option("--task", default=None, help=_described("task"))
@click.option("--data-dir", default=None, help=_described("data_dir"))
@click.option("--model", default=None, help=_described("model"))
@click.option("--cluster", default=None, help=_described("cluster"))
@click.option("--insecure", is_flag=True, default=None, help=_described("insecure"))
@config_option("method", "--method", type=click.Choice(["sft", "prompt"]))
@config_option("steps", "--steps", type=int)
@config_option("batch_size", "--batch-size", type=int)
@config_option("prompt_length", "--prompt-length", "-L", type=int)
@config_option("max_length", "--max-length", type=int)
@config_option("lr", "--lr", type=float)
@config_option("eps", "--eps", type=float)
@config_option("grad_max", "--grad-max", type=float)
@config_option("loss_scale", "--loss-scale", type=float)
@config_option("similarity_scale", "--similarity-scale", type=float)
@config_option("seed", "--seed", type=int)
@config_option("checkpoint_every", "--checkpoint-every", type=int)
def gradient(out: Path, resume: bool, **options: Any) -> None:
    """Secure SFT or secure gradient prompt tuning on the cluster, one Adam step per request.

    Prints the loss of every step; only the losses (and, for --method prompt, the prompt) come back.
    With --resume (and --steps to extend it) the run in OUT continues from its latest server checkpoint.
    """
    from data_owner.cli import handle_errors

    handle_errors(_gradient)(out=out, resume=resume, **options)


def _gradient(out: Path, resume: bool, **options: Any) -> None:
    given = {k: v for k, v in options.items() if v is not None}
    if resume:
        run = GradientRun.open(out)
        steps = given.pop("steps", None)
        if given:
            raise DataOwnerError(f"--resume takes the run's own settings; drop {sorted(given)}")
        if steps is not None:
            run.config = run.config.model_copy(update={"steps": steps})
            atomic_write_bytes(run.folder / CONFIG, run.config.model_dump_json(indent=2).encode())
    else:
        for key in ("data_dir", "model", "task", "cluster"):
            if key in given and Path(given[key]).exists():
                given[key] = str(Path(given[key]).absolute())
        try:
            config = GradientConfig.model_validate(given)
        except ValidationError as exc:
            raise DataOwnerError(f"invalid options: {exc}") from None
        run = GradientRun.create(out, config)
    summary = run.run()
    click.echo(json.dumps(summary, indent=2))
