"""``secp-tune`` end to end on a tiny model: outputs, the NOT PRIVATE label, bad input, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_data_owner_common import synthetic_rows, tiny_setup, write_split, write_task

from data_owner.cli import main
from data_owner.runfolder import RunFolder

REPO = Path(__file__).resolve().parents[1]
NOT_PRIVATE = "NOT PRIVATE"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return tiny_setup(tmp_path_factory.mktemp("tiny"))


def run_args(model: Path, data: Path, task: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--task",
        str(task),
        "--data-dir",
        str(data),
        "--model",
        str(model),
        "--out",
        str(out),
        "--backend",
        "plain",
        "--placeholder",
        "[UNK]",
        "-L",
        "3",
        "-d",
        "8",
        "--popsize",
        "6",
        "--budget",
        "24",
        "--eval-every",
        "12",
        "--seed",
        "1",
        "--max-length",
        "32",
        *extra,
    ]


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_run_eval_report_with_json_and_the_not_private_label(tiny, tmp_path: Path) -> None:
    model, data, task = tiny
    out = tmp_path / "run"
    res = invoke(run_args(model, data, task, out, "--json", "--quiet"))
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["status"] == "finished" and result["calls"] == 24 and result["private"] is False
    assert NOT_PRIVATE in result["privacy"] and NOT_PRIVATE in res.stderr
    for name in (
        "config.json",
        "checkpoint.pkl",
        "history.jsonl",
        "prompt.npy",
        "report.json",
        "loss.png",
        "dev.png",
    ):
        assert (out / name).is_file(), name
    assert NOT_PRIVATE in json.loads((out / "config.json").read_text())["privacy"]

    res = invoke(["eval", str(out), "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert (
        ev["examples"] == 32
        and 0 <= ev["tuned"] <= 100
        and ev["unit"] == "percent"
        and "zero_shot" in ev
        and NOT_PRIVATE in ev["privacy"]
    )

    res = invoke(["report", str(out)])
    assert res.exit_code == 0 and NOT_PRIVATE in res.stdout and "eval test: tuned" in res.stdout
    assert json.loads((out / "report.json").read_text())["eval"]["test"]["tuned"] == ev["tuned"]


def test_progress_bar_shows_generation_loss_dev_and_eta(tiny, tmp_path: Path) -> None:
    model, data, task = tiny
    res = invoke(run_args(model, data, task, tmp_path / "run"))
    assert res.exit_code == 0
    for part in ("gen 4/4", "loss ", "dev ", "ETA", "24/24", "0 B"):
        assert part in res.stderr, part


def no_run_left(parent: Path) -> bool:
    return not any(p.name == "run" or p.name.startswith(".run.") for p in parent.iterdir())


@pytest.mark.parametrize(
    ("case", "message", "code"),
    [
        ("missing_file", "data file not found", 2),
        ("bad_label", "label '5' is not one of the labels", 2),
        ("empty_split", "empty split", 2),
        ("no_mask", "mask slot <mask>", 2),
        ("no_text_slot", "no text slot", 2),
        ("small_budget", "below one generation", 2),
        ("template_init_on_an_encoder", "--prompt-init template is for decoders", 2),
        ("cluster_down", "not available", 3),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_no_run_folder(
    tiny, tmp_path: Path, case, message, code
) -> None:
    model, data, task = tiny
    bad = tmp_path / "data"
    bad.mkdir()
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (bad / name).write_bytes((data / name).read_bytes())
    extra: list[str] = []
    if case == "missing_file":
        (bad / "dev.tsv").unlink()
    elif case == "bad_label":
        write_split(bad / "train.tsv", [*synthetic_rows(2, 0), (5, "w7 w8")])
    elif case == "empty_split":
        write_split(bad / "dev.tsv", [])
    elif case == "no_mask":
        task = write_task(tmp_path, template="<P> {text} w3")
    elif case == "no_text_slot":
        task = write_task(tmp_path, template="<P> w3 <mask>")
    elif case == "small_budget":
        extra = ["--popsize", "6", "--budget", "5"]
    elif case == "template_init_on_an_encoder":
        extra = ["--prompt-init", "template", "--prompt-length", "2"]
    elif case == "cluster_down":
        from cluster_ops.testing import write_test_cluster

        cluster = write_test_cluster(tmp_path / "cluster", "2pc", certs=False)
        args = run_args(model, bad, task, tmp_path / "run")
        args[args.index("plain")] = "secure"
        extra = ["--cluster", str(cluster), "--insecure"]
    args = run_args(model, bad, task, tmp_path / "run") if case != "cluster_down" else args
    res = invoke([*args, *extra])
    assert res.exit_code == code, res.output
    assert message in res.stderr and "Traceback" not in res.output
    assert no_run_left(tmp_path)


def test_existing_folder_and_non_run_folder(tiny, tmp_path: Path) -> None:
    model, data, task = tiny
    assert invoke(run_args(model, data, task, tmp_path / "run", "--quiet")).exit_code == 0
    res = invoke(run_args(model, data, task, tmp_path / "run", "--quiet"))
    assert res.exit_code == 2 and "already exists" in res.stderr
    (tmp_path / "junk").mkdir()
    for cmd in ("resume", "eval", "report"):
        res = invoke([cmd, str(tmp_path / "junk")])
        assert res.exit_code == 2 and "is not a run folder" in res.stderr, cmd


def test_kill_minus_9_then_resume_equals_an_uninterrupted_run(tiny, tmp_path: Path) -> None:
    model, data, task = tiny
    extra = ["--budget", "120", "--eval-every", "30", "--quiet"]
    assert invoke(run_args(model, data, task, tmp_path / "ref", *extra)).exit_code == 0

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "data_owner.cli", *run_args(model, data, task, run, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        history = run / "history.jsonl"
        if history.is_file() and len(history.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = invoke(["resume", str(run), "--json", "--quiet"])
    assert res.exit_code == 0, res.output

    def strip(folder: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in RunFolder(folder).read_history()]

    assert strip(run) == strip(tmp_path / "ref")
    a, b = (json.loads((p / "report.json").read_text()) for p in (run, tmp_path / "ref"))
    for key in ("best_dev", "best_dev_loss", "best_train_loss", "best_calls", "calls", "status"):
        assert a[key] == b[key], key
    assert (run / "prompt.npy").read_bytes() == (tmp_path / "ref" / "prompt.npy").read_bytes()
    res = invoke(["resume", str(run)])
    assert res.exit_code == 0 and "finished already" in res.stderr
