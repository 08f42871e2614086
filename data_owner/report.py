"""``report.json`` and the PNG plots of a run, rebuilt from its folder (config, history, checkpoint, evals).

Plots (matplotlib, Agg): training loss (generation min and mean) against calls, and dev score (zero-shot,
each check, the kept best) against calls.  A run on the plaintext backend carries the NOT PRIVATE label in the
report and in every plot title.  Scores are in percent (``metrics.percent``); a folder written before
``run_format`` 2 keeps fractions in its history and eval records, converted here on reading.
"""

from __future__ import annotations

import json
from typing import Any

from data_owner.checkpoint import atomic_write_json, load_checkpoint
from data_owner.metrics import percent
from data_owner.runfolder import CHECKPOINT, PROMPT, REPORT, RunFolder

EVAL_PREFIX = "eval_"
#: the score fields of an eval record (percent; ``gain`` in percentage points)
EVAL_SCORES = ("tuned", "tuned_accuracy", "zero_shot", "zero_shot_accuracy", "gain")


def read_eval(path) -> dict[str, Any]:
    """One eval record, its scores in percent (records from before ``run_format`` 2 hold fractions)."""
    ev = json.loads(path.read_text())
    if ev.get("unit") != "percent":
        ev.update({k: percent(ev[k]) for k in EVAL_SCORES if k in ev}, unit="percent")
    return ev


def history_scale(record: dict[str, Any]) -> float:
    """Factor to percent for the dev scores in ``history.jsonl`` (1, or 100 for an older folder)."""
    return 1.0 if record.get("score_unit") == "percent" else 100.0


def summary(folder: RunFolder) -> dict[str, Any]:
    record = folder.read_config()
    state = load_checkpoint(folder.file(CHECKPOINT))
    history = folder.read_history()
    cfg = record["config"]
    best, zero = state["best"], state["zero_shot"]
    evals = {}
    for f in sorted(folder.path.glob(f"{EVAL_PREFIX}*.json")):
        evals[f.stem.removeprefix(EVAL_PREFIX)] = read_eval(f)
    return {
        "run": str(folder.path),
        "task": cfg["task"],
        "backend": record["backend"],
        "private": record["private"],
        "privacy": record["privacy"],
        "head": record["head"],
        "data_dir": cfg["data_dir"],
        "metric": record["metric"],
        "status": "finished" if state["finished"] else "incomplete",
        "generation": state["generation"],
        "generations": record["generations"],
        "calls": state["calls"],
        "dev_calls": state["dev_calls"],
        "best_train_loss": state["best_train_loss"],
        "score_unit": "percent",
        "zero_shot_dev": percent(zero["dev_score"]),
        "best_dev": percent(best["dev_score"]),
        "best_dev_loss": best["dev_loss"],
        "best_source": best["source"],
        "best_calls": best["calls"],
        "elapsed_s": round(state["elapsed"], 2),
        "bytes_sent": history[-1].get("bytes_sent", 0) if history else 0,
        "bytes_received": history[-1].get("bytes_received", 0) if history else 0,
        "server_bytes": history[-1].get("server_bytes", 0) if history else 0,
        "server_rounds": history[-1].get("server_rounds", 0) if history else 0,
        "prompt_file": f"{PROMPT} (kept at the data owner only)",
        "config": {
            k: cfg[k]
            for k in (
                "prompt_length",
                "intrinsic_dim",
                "popsize",
                "sigma0",
                "budget",
                "seed",
                "alpha",
                "scale_ref",
                "eval_every",
            )
        }
        | ({"placement": cfg.get("placement", "prefix")} if record["head"] == "next-token" else {}),
        "eval": evals,
    }


def write_report(folder: RunFolder) -> dict[str, Any]:
    out = summary(folder)
    atomic_write_json(folder.file(REPORT), out)
    plot(folder, out)
    return out


def plot(folder: RunFolder, info: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = folder.read_history()
    scale = history_scale(folder.read_config())
    tag = f"{info['task']} - {info['backend']}"
    gens = [r for r in history if "loss_min" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if gens:
        ax.plot([r["calls"] for r in gens], [r["loss_min"] for r in gens], label="generation min")
        ax.plot(
            [r["calls"] for r in gens], [r["loss_mean"] for r in gens], label="generation mean", alpha=0.7
        )
        ax.plot(
            [r["calls"] for r in gens], [r["best_train_loss"] for r in gens], label="best so far", ls="--"
        )
    ax.set_xlabel("calls")
    ax.set_ylabel("training loss")
    ax.set_title(f"loss: {tag}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder.file("loss.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    checks = [r for r in history if "dev" in r and "gen_best" in r["dev"]]
    ax.axhline(info["zero_shot_dev"], color="grey", ls=":", label="zero-shot")
    if checks:
        calls = [r["calls"] for r in checks]
        ax.plot(calls, [scale * r["dev"]["gen_best"] for r in checks], "o-", label="generation best")
        ax.plot(calls, [scale * r["dev"]["mean"] for r in checks], "s-", label="CMA-ES mean", alpha=0.7)
        ax.step(calls, [scale * r["best_dev"] for r in checks], where="post", ls="--", label="kept best")
    ax.set_xlabel("calls")
    ax.set_ylabel(f"dev {info['metric']} (%)")
    ax.set_title(f"dev: {tag}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder.file("dev.png"), dpi=100)
    plt.close(fig)
