"""The forward-only tuning loop (BBT with CMA-ES), checkpointed after every generation.

Per generation: ``ask`` popsize points z, build prompts p = A z + p0, evaluate them ALL in one oracle call,
``tell`` the losses.  Every ``eval_every`` calls (and after the last generation) the dev set is scored for
the generation's best candidate and the CMA-ES mean; the best dev score (ties broken by dev loss) is kept.
The zero-shot prompt (z = 0) is scored first and stays the incumbent unless a tuned prompt beats it strictly.

``cma`` pitfalls handled here: the budget is cut into whole generations (no ``maxfevals`` overshoot); all
termination criteria that could stop a short run early (``tolflatfitness`` after ONE flat generation, tolfun,
tolx, stagnation) are switched off, the budget alone ends the run; no ``outcmaes/`` files are written.

Crash safety: CMA-ES draws its normals from :class:`GaussianSource`, a picklable seeded generator inside the
pickled ``cma`` object, so the checkpoint holds the full random state; resuming replays exactly the same
trajectory as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cma
import numpy as np

from data_owner import metrics
from data_owner.checkpoint import atomic_write_json, atomic_write_npy, load_checkpoint, save_checkpoint
from data_owner.config import RunConfig
from data_owner.errors import DataOwnerError
from data_owner.metrics import percent
from data_owner.oracle import LossOracle
from data_owner.runfolder import CHECKPOINT, CONFIG, PROMPT, PendingRunFolder, RunFolder
from data_owner.session import Session, open_session

Progress = Callable[[dict[str, Any]], None]


class GaussianSource:
    """``randn(*shape)`` for ``cma``'s ``randn`` option: a picklable, seeded numpy Generator."""

    def __init__(self, seed: int) -> None:
        self.gen = np.random.default_rng([seed, 0xC3A])

    def __call__(self, *shape: int) -> np.ndarray:
        return self.gen.standard_normal(shape)


def new_strategy(config: RunConfig) -> cma.CMAEvolutionStrategy:
    never = 10**12
    opts = {
        "popsize": config.popsize,
        "seed": np.nan,
        "randn": GaussianSource(config.seed),
        "tolflatfitness": never,
        "tolfun": 0,
        "tolfunhist": 0,
        "tolx": 0,
        "tolstagnation": never,
        "maxiter": never,
        "verbose": -9,
        "verb_log": 0,
        "verb_disp": 0,
        "CMA_diagonal": bool(config.cma_diagonal),
    }
    return cma.CMAEvolutionStrategy(np.zeros(config.intrinsic_dim), config.sigma0, opts)


class Tuner:
    """One run: :meth:`start` a new one or :meth:`resume` one from its folder, then :meth:`run`."""

    def __init__(
        self, session: Session, folder: RunFolder, state: dict[str, Any], on_progress: Progress | None = None
    ) -> None:
        self.s = session
        self.folder = folder
        self.state = state
        self.on_progress = on_progress

    # ------------------------------------------------------------------ construction
    @classmethod
    def start(
        cls,
        config: RunConfig,
        run_dir: Path,
        on_progress: Progress | None = None,
        oracle: LossOracle | None = None,
    ) -> Tuner:
        """Validate everything, score zero-shot on dev, then create the run folder atomically."""
        config.check_budget()
        if Path(run_dir).exists():
            PendingRunFolder(run_dir)  # raises with a clear message
        session = open_session(config, oracle=oracle)
        pending: PendingRunFolder | None = None
        try:
            pending = PendingRunFolder(run_dir)
            atomic_write_json(pending.folder.file(CONFIG), config_record(session))
            state: dict[str, Any] = {
                "generation": 0,
                "calls": 0,
                "dev_calls": 0,
                "es": new_strategy(config),
                "best": None,
                "best_train_loss": math.inf,
                "history_lines": 0,
                "elapsed": 0.0,
                "finished": False,
                "zero_shot": None,
                "cluster_job": session.oracle.job_ref,
            }
            tuner = cls(session, pending.folder, state, on_progress)
            t0 = time.perf_counter()
            zero = np.zeros((1, config.intrinsic_dim))
            score, loss = tuner._dev_scores(zero)
            state["zero_shot"] = {"dev_score": score[0], "dev_loss": loss[0]}
            state["best"] = {
                "z": zero[0],
                "dev_score": score[0],
                "dev_loss": loss[0],
                "calls": 0,
                "source": "zero-shot",
            }
            state["elapsed"] = time.perf_counter() - t0
            tuner._record(
                {
                    "generation": 0,
                    "calls": 0,
                    "dev": {"zero_shot": percent(score[0]), "zero_shot_loss": loss[0]},
                    "best_dev": percent(score[0]),
                    **tuner._cost(),
                }
            )
            tuner._save()
            tuner.folder = pending.commit()
            return tuner
        except BaseException:
            if pending is not None:
                pending.discard()
            session.close()
            raise

    @classmethod
    def resume(
        cls, run_dir: Path, on_progress: Progress | None = None, oracle: LossOracle | None = None
    ) -> Tuner:
        """Reload the configuration and the last checkpoint; drop history beyond it."""
        folder = RunFolder(run_dir)
        record = folder.read_config()
        config = RunConfig.model_validate(record["config"])
        try:
            state = load_checkpoint(folder.file(CHECKPOINT))
        except ValueError as exc:
            raise DataOwnerError(str(exc)) from exc
        session = open_session(config, oracle=oracle, std_ref=stored_std_ref(folder, record))
        try:
            if session.data_hashes != record.get("data_hashes"):
                raise DataOwnerError(f"the data files changed since {run_dir} was started; start a new run")
            folder.remove_stale_temporaries()
            earlier = state.get("cluster_job")
            if earlier:  # the job the interrupted process left on the servers
                session.oracle.release(earlier)
            state["cluster_job"] = session.oracle.job_ref
            folder.truncate_history(state["history_lines"])
            atomic_write_npy(folder.file(PROMPT), session.projection(state["best"]["z"]))
        except BaseException:
            session.close()
            raise
        return cls(session, folder, state, on_progress)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        """Tune until the budget is spent; returns the summary written to report.json."""
        from data_owner.report import write_report

        cfg = self.s.config
        es: cma.CMAEvolutionStrategy = self.state["es"]
        t_start, base_elapsed, gens_here = time.perf_counter(), self.state["elapsed"], 0
        try:
            while self.state["generation"] < cfg.generations:
                t0 = time.perf_counter()
                Z = np.asarray(es.ask())
                losses = self.s.oracle.losses(self.s.projection(Z), "train")
                if losses.shape != (len(Z),) or not np.all(np.isfinite(losses)):
                    raise DataOwnerError(f"the oracle returned bad losses {losses!r}")
                es.tell(list(Z), [float(v) for v in losses])
                prev_calls = self.state["calls"]
                self.state["calls"] += len(Z)
                self.state["generation"] += 1
                self.state["best_train_loss"] = min(self.state["best_train_loss"], float(losses.min()))
                rec: dict[str, Any] = {
                    "generation": self.state["generation"],
                    "calls": self.state["calls"],
                    "loss_min": float(losses.min()),
                    "loss_mean": float(losses.mean()),
                    "loss_max": float(losses.max()),
                    "best_train_loss": self.state["best_train_loss"],
                    "sigma": float(es.sigma),
                }
                last = self.state["generation"] == cfg.generations
                if last or prev_calls // cfg.eval_every < self.state["calls"] // cfg.eval_every:
                    rec["dev"] = self._dev_check(Z[int(np.argmin(losses))], np.asarray(es.mean))
                rec["best_dev"] = percent(self.state["best"]["dev_score"])
                gens_here += 1
                self.state["elapsed"] = base_elapsed + time.perf_counter() - t_start
                rec.update(self._cost(), seconds=round(time.perf_counter() - t0, 4))
                if last:
                    self.state["finished"] = True
                self._record(rec)
                self._save()
                self._progress(rec, gens_here, time.perf_counter() - t_start)
        finally:
            self.s.close()
        return write_report(self.folder)

    # ------------------------------------------------------------------ pieces
    def _dev_scores(self, Z: np.ndarray) -> tuple[list[float], list[float]]:
        dev = self.s.splits["dev"]
        logits = self.s.oracle.logits(self.s.projection(Z), "dev")
        self.state["dev_calls"] += len(Z)
        scores = [metrics.score(self.s.task.metric, lg, dev.labels) for lg in logits]
        losses = [float(v) for v in metrics.loss(self.s.loss, logits, dev.labels)]
        return scores, losses

    def _dev_check(self, z_best: np.ndarray, z_mean: np.ndarray) -> dict[str, Any]:
        scores, losses = self._dev_scores(np.stack([z_best, z_mean]))
        best = self.state["best"]
        out: dict[str, Any] = {
            "gen_best": percent(scores[0]),
            "gen_best_loss": losses[0],
            "mean": percent(scores[1]),
            "mean_loss": losses[1],
            "improved": False,
            # the scored points themselves (history stays at the data owner, like the prompt)
            "z_gen_best": [float(v) for v in z_best],
            "z_mean": [float(v) for v in z_mean],
        }
        for z, sc, ls, src in (
            (z_best, scores[0], losses[0], "generation-best"),
            (z_mean, scores[1], losses[1], "mean"),
        ):
            if (sc, -ls) > (best["dev_score"], -best["dev_loss"]):
                best = {
                    "z": np.array(z),
                    "dev_score": sc,
                    "dev_loss": ls,
                    "calls": self.state["calls"],
                    "source": src,
                }
                out["improved"] = True
        if out["improved"]:
            self.state["best"] = best
            atomic_write_npy(self.folder.file(PROMPT), self.s.projection(best["z"]))
        return out

    def _cost(self) -> dict[str, Any]:
        c = self.s.oracle.cost
        return {
            "bytes_sent": c.bytes_sent,
            "bytes_received": c.bytes_received,
            "server_bytes": c.server_bytes,
            "server_rounds": c.server_rounds,
            "dev_calls": self.state["dev_calls"],
        }

    def _record(self, rec: dict[str, Any]) -> None:
        self.folder.append_history(rec)
        self.state["history_lines"] += 1

    def _save(self) -> None:
        if self.state["generation"] == 0:
            atomic_write_npy(self.folder.file(PROMPT), self.s.projection(self.state["best"]["z"]))
        save_checkpoint(self.folder.file(CHECKPOINT), self.state)

    def _progress(self, rec: dict[str, Any], gens_here: int, secs_here: float) -> None:
        if self.on_progress is None:
            return
        left = self.s.config.generations - self.state["generation"]
        self.on_progress(
            {
                **rec,
                "generations": self.s.config.generations,
                "budget": self.s.config.generations * self.s.config.popsize,
                "best_dev": percent(self.state["best"]["dev_score"]),
                "elapsed": self.state["elapsed"],
                "eta": secs_here / gens_here * left,
                "backend": self.s.oracle.label,
            }
        )


#: config.json's layout; 2: absolute data, model and task paths, the data files, scores in percent.
RUN_FORMAT = 2


def config_record(session: Session) -> dict[str, Any]:
    """``config.json``: the configuration plus what was derived from it at training time and the privacy
    label.  ``std_ref`` (with the seed, L, d, sigma0 and alpha of the config) rebuilds the projection A, so
    ``eval`` and ``resume`` rebuild exactly the prompt the run saved, whatever file they score."""
    return {
        "run_format": RUN_FORMAT,
        "score_unit": "percent",
        "config": session.config.model_dump(),
        "backend": session.oracle.label,
        "private": session.oracle.private,
        "privacy": session.oracle.privacy(),
        "head": session.head,
        "loss": session.loss,
        "metric": session.task.metric,
        "task": session.task.model_dump(),
        "std_ref": session.std_ref,
        "projection_std": session.projection.std,
        "hidden": session.projection.H,
        "data_hashes": session.data_hashes,
        "data_files": {k: str(v) for k, v in session.data_files.items()},
        "sizes": {k: len(v) for k, v in session.splits.items()},
        "generations": session.config.generations,
        "effective_budget": session.config.generations * session.config.popsize,
    }


def stored_std_ref(folder: RunFolder, record: dict[str, Any]) -> float:
    """The projection's reference std fixed when the run started; refuses a folder that lacks it."""
    value = record.get("std_ref")
    if not isinstance(value, int | float):
        raise DataOwnerError(
            f"{folder.path} does not record the prompt's scale (std_ref in {CONFIG}); its prompt cannot be "
            "rebuilt exactly: start a new run"
        )
    return float(value)
