"""Plaintext accuracy of prompt tuning a causal decoder (SmolLM2-135M) with ``secp-tune``'s own code.

    OMP_NUM_THREADS=1 python -m bench.decoder_study --model DIR [--tasks sst2 ag_news]
        [--placements suffix prefix] [--seeds 0 1 2] [--budget 200] [--out FILE.json]

``DIR`` is a LLaMA-family Hugging Face folder (``gguf_to_folder(smollm2_gguf(), DIR)`` for SmolLM2).  For
each (task, placement, seed) it starts a run exactly as ``secp-tune run --backend plain`` does (the default
recipe; only ``--budget`` may be lowered, and the dev split alone picks the kept prompt), then scores the
test split ONCE with ``secp-tune eval``'s code.  Beside it, once per task: the model's own zero-shot (no
prompt rows at all) on dev and test, raw and content-free calibrated (the logits of the text "N/A"
subtracted; Zhao et al. 2021).  Runs go to ``--runs`` and are reused when finished, so an interrupted study
continues; the JSON is rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_owner.backends.plain_decoder import PlainDecoderOracle
from data_owner.checkpoint import load_checkpoint
from data_owner.config import RunConfig
from data_owner.data import Example, bundled_data_dir
from data_owner.decoder import DecoderEncoder, with_template_length
from data_owner.evaluate import saved_prompt
from data_owner.metrics import percent, score
from data_owner.projection import Projection
from data_owner.report import write_report
from data_owner.runfolder import CHECKPOINT, RunFolder
from data_owner.session import Session, open_session
from data_owner.task import load_task
from data_owner.tuner import Tuner
from mpc_core.nn.decoder import decode, embed_tokens
from mpc_core.nn.decoder_cache import extend

#: The suffix cache limit of the sessions that score the test split once (a resource limit, not a recipe).
SCORING_CACHE_LIMIT_MB = 16384.0
#: Recipe options a study may set beside the placement (``--recipe KEY=VALUE``), with their types.
RECIPE_OPTIONS = {"prompt_init": str, "alpha": float, "sigma0": float, "popsize": int, "intrinsic_dim": int}


def run_config(
    model_dir: Path, task: str, placement: str, seed: int, budget: int, recipe: dict[str, Any] | None = None
) -> RunConfig:
    """The default recipe (``secp-tune run``'s defaults) but for the placement, the seed, the budget and
    ``recipe``; a ``template``-initialised prompt takes the length its template gives."""
    config = RunConfig(
        task=task,
        data_dir=str(bundled_data_dir(task)),
        model=str(model_dir),
        backend="plain",
        placement=placement,
        seed=seed,
        budget=budget,
        **(recipe or {}),
    )
    return with_template_length(config) if config.prompt_init == "template" else config


def variant(placement: str, recipe: dict[str, Any]) -> str:
    """The name of a placement with its recipe options (``suffix``, ``suffix-prompt_init=template``)."""
    return "-".join([placement, *(f"{k}={v}" for k, v in sorted(recipe.items()))])


def tune(
    model_dir: Path,
    task: str,
    placement: str,
    seed: int,
    budget: int,
    runs: Path,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One tuning run (train and dev only: the dev split alone picks the kept prompt), reused if finished."""
    folder = run_folder(runs, task, placement, seed, recipe or {})
    t0 = time.perf_counter()
    if not (RunFolder(folder).is_complete_run and write_report(RunFolder(folder))["status"] == "finished"):
        if folder.exists():
            Tuner.resume(folder).run()
        else:
            Tuner.start(run_config(model_dir, task, placement, seed, budget, recipe), folder).run()
    wall = time.perf_counter() - t0  # set-up (weights, prefill) and tuning; ~0 for a reused run
    report = write_report(RunFolder(folder))
    history = RunFolder(folder).read_history()
    train_seconds = sum(r.get("seconds", 0.0) for r in history[1:])
    return {
        "seed": seed,
        "calls": report["calls"],
        "dev_calls": report["dev_calls"],
        "zero_shot_dev_z0": report["zero_shot_dev"],
        "best_dev": report["best_dev"],
        "best_source": report.get("best_source"),
        "tuning_wall_s": report["elapsed_s"],
        "process_wall_s": round(wall, 1),
        "seconds_per_generation": round(train_seconds / max(1, len(history) - 1), 1),
        "run": str(folder),
    }


def run_folder(runs: Path, task: str, placement: str, seed: int, recipe: dict[str, Any]) -> Path:
    return runs / f"{task}_{variant(placement, recipe)}_{seed}"


def kept_prompt(folder: Path, p0: np.ndarray | None = None) -> np.ndarray:
    """The run's saved prompt, checked against its checkpoint (as ``secp-tune eval`` does); ``p0`` the
    prompt's starting rows (a template-initialised prompt's; the same for every seed)."""
    run = RunFolder(folder)
    record = run.read_config()
    state = load_checkpoint(run.file(CHECKPOINT))
    config = RunConfig.model_validate(record["config"])
    projection = Projection(
        config.prompt_length,
        record["hidden"],
        config.intrinsic_dim,
        record["projection_std"],
        config.seed,
        p0,
    )
    return saved_prompt(run, projection(state["best"]["z"]))


def no_prompt_logits(session: Session, split: str) -> np.ndarray:
    """[n, C]: example part + answer template with no prompt rows, from the suffix oracle's kept cache."""
    oracle = session.oracle
    assert isinstance(oracle, PlainDecoderOracle) and oracle.placement == "suffix"
    data, _ = oracle.splits[split]
    tail = data.tail.shape[0]
    out = np.empty((len(data), oracle.head.classes))
    for idx, cache in oracle.caches[split]:
        hidden = extend(oracle.B, oracle.cfg, cache, data.tail[None])
        out[idx] = oracle.head.logits(oracle.B, oracle.cfg, hidden, np.full(len(idx), tail - 1))
    return out


def content_free_logits(session: Session) -> np.ndarray:
    """[C]: the logits of the content-free text "N/A" in every text slot (calibration, Zhao et al. 2021)."""
    oracle = session.oracle
    assert isinstance(oracle, PlainDecoderOracle) and isinstance(session.encoder, DecoderEncoder)
    enc = session.encoder
    ids = np.asarray(enc.token_ids(Example({s: "N/A" for s in session.task.slots}, 0)) + enc.tail_ids)[None]
    word = oracle.B.param("emb.word")
    hidden = decode(oracle.B, oracle.cfg, embed_tokens(word, ids), np.ones_like(ids))
    return np.asarray(oracle.head.logits(oracle.B, oracle.cfg, hidden, np.array([ids.shape[1] - 1])))[0]


def wait_finished(folder: Path, poll_s: float = 20.0) -> Path:
    """Block until the run in ``folder`` (tuned by another process) has finished."""
    while not (
        RunFolder(folder).is_complete_run and load_checkpoint(RunFolder(folder).file(CHECKPOINT))["finished"]
    ):
        time.sleep(poll_s)
    return folder


def final_scores(
    model_dir: Path,
    task: str,
    placements: dict[str, list[Path]],
    no_prompt: bool = True,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test (and dev) scores, computed ONCE, after the runs: the model's own zero-shot (raw and calibrated),
    the zero prompt (z = 0) and each seed's kept prompt, per placement.  The examples are prefilled once for
    all prompts of the suffix placement; what needs no tuned prompt is computed while the runs still tune
    (other processes), each kept prompt once its run has finished."""
    spec = load_task(task)
    out: dict[str, Any] = {}
    sessions: dict[str, Session] = {}
    try:
        if no_prompt or "suffix" in placements:
            sessions["suffix"] = open_session(
                run_config(model_dir, task, "suffix", 0, 20, {"cache_limit_mb": SCORING_CACHE_LIMIT_MB}),
                splits=("dev", "test"),
                std_ref=1.0,
            )
        if no_prompt:
            free = content_free_logits(sessions["suffix"])
            for split in ("dev", "test"):
                data = sessions["suffix"].splits[split]
                logits = no_prompt_logits(sessions["suffix"], split)
                out[f"no_prompt_{split}"] = {
                    "raw": percent(score(spec.metric, logits, data.labels)),
                    "calibrated": percent(score(spec.metric, logits - free, data.labels)),
                    "examples": len(data),
                }
        if recipe and "suffix" in sessions:
            sessions.pop("suffix").close()  # its caches are not the recipe's: free them before the next
        for placement, folders in placements.items():
            if placement not in sessions or recipe:
                # scoring only: the whole test split's cache may exceed a run's default limit (AG News: 6 GB)
                scoring = {**(recipe or {}), "cache_limit_mb": SCORING_CACHE_LIMIT_MB}
                sessions[placement] = open_session(
                    run_config(model_dir, task, placement, 0, 20, scoring), splits=("test",), std_ref=1.0
                )
            session = sessions[placement]
            labels = session.splits["test"].labels
            t0 = time.perf_counter()
            z0 = session.oracle.logits(session.projection(np.zeros(session.projection.d))[None], "test")[0]
            seconds = time.perf_counter() - t0
            p0 = session.projection.p0
            prompts = np.stack([kept_prompt(wait_finished(f), p0) for f in folders])
            t0 = time.perf_counter()
            tuned = session.oracle.logits(prompts, "test")
            seconds += time.perf_counter() - t0
            out[placement] = {
                "test_z0": percent(score(spec.metric, z0, labels)),
                "test_tuned": [percent(score(spec.metric, lg, labels)) for lg in tuned],
                "test_eval_wall_s": round(seconds, 1),
            }
    finally:
        for session in sessions.values():
            session.close()
    return out


def mean_sd(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {"mean": round(statistics.fmean(values), 2), "sd": round(sd, 2), "n": len(values)}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--placements", nargs="+", default=["suffix"], choices=["prefix", "suffix"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=RunConfig.model_fields["budget"].default)
    parser.add_argument("--runs", type=Path, default=Path(".cache/decoder_study"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/decoder_accuracy.json"))
    parser.add_argument("--final", action="store_true", help="after the runs, score test once")
    parser.add_argument(
        "--final-only", action="store_true", help="tune nothing: wait for the runs (other processes), score"
    )
    parser.add_argument("--no-zero-shot", action="store_true", help="with --final: skip the no-prompt scores")
    parser.add_argument(
        "--recipe", action="append", default=[], metavar="KEY=VALUE", help=f"one of {sorted(RECIPE_OPTIONS)}"
    )
    args = parser.parse_args()
    recipe: dict[str, Any] = {}
    for item in args.recipe:
        key, _, value = item.partition("=")
        if key not in RECIPE_OPTIONS or not value:
            parser.error(f"--recipe takes KEY=VALUE with KEY one of {sorted(RECIPE_OPTIONS)}, got {item!r}")
        recipe[key] = RECIPE_OPTIONS[key](value)
    model_dir = args.model.resolve()
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result.update(
        {
            "what": "plaintext (NOT PRIVATE) prompt tuning of a causal decoder with secp-tune's own code",
            "model": model_dir.name,
            "recipe": {
                k: RunConfig.model_fields[k].default
                for k in (
                    "prompt_length",
                    "intrinsic_dim",
                    "popsize",
                    "sigma0",
                    "alpha",
                    "scale_ref",
                    "eval_every",
                )
            },
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.processor() or platform.machine(),
            "threads": 1,
            "score_unit": "percent",
        }
    )
    tasks = result.setdefault("tasks", {})

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    for task in args.tasks:
        entry = tasks.setdefault(task, {})
        for placement in args.placements:
            pl = entry.setdefault(
                variant(placement, recipe), {"budget": args.budget, "recipe": recipe, "runs": []}
            )
            for seed in [] if args.final_only else args.seeds:
                if any(r["seed"] == seed for r in pl["runs"]):
                    continue
                pl["budget"] = args.budget
                pl["runs"].append(tune(model_dir, task, placement, seed, args.budget, args.runs, recipe))
                pl["runs"].sort(key=lambda r: r["seed"])
                for key in ("best_dev", "zero_shot_dev_z0", "tuning_wall_s"):
                    pl[key] = mean_sd([r[key] for r in pl["runs"]])
                save()
                print(json.dumps(pl["runs"][-1]), flush=True)
        if args.final or args.final_only:
            folders = {
                p: [run_folder(args.runs, task, p, seed, recipe) for seed in args.seeds]
                for p in args.placements
            }
            final = final_scores(model_dir, task, folders, not args.no_zero_shot, recipe)
            for placement in args.placements:
                pl = entry.setdefault(
                    variant(placement, recipe), {"budget": args.budget, "recipe": recipe, "runs": []}
                )
                pl["runs"] = [
                    tune(model_dir, task, placement, s, args.budget, args.runs, recipe) for s in args.seeds
                ]
                for r, score_ in zip(pl["runs"], final[placement]["test_tuned"], strict=True):
                    r["test_tuned"] = score_
                for key in ("best_dev", "zero_shot_dev_z0", "tuning_wall_s", "test_tuned"):
                    pl[key] = mean_sd([r[key] for r in pl["runs"]])
                pl["test_z0"] = final[placement]["test_z0"]
                pl["test_eval_wall_s"] = final[placement]["test_eval_wall_s"]
            for key in ("no_prompt_dev", "no_prompt_test"):
                if key in final:
                    entry[key] = final[key]
            save()
            print(json.dumps({task: final}), flush=True)


if __name__ == "__main__":
    main()
