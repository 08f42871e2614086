"""Fault injection on a real secure tuning run: a server or the dealer killed or paused at a random point.

Issue #4, item 2.  One local cluster per suite (real server processes, mutual TLS) serves a tiny shared
model; an uninterrupted run (in process, the configuration the CLI gets; it also checks that its candidates
are farther apart than the secure noise, ``MARGIN``) gives the reference.  Each trial then starts the same
run with ``secp-tune run`` (same seed) and, at a point drawn from a seeded generator (after a random number
of completed generations plus a random fraction of a generation), SIGKILLs or SIGSTOPs one participant (P0,
P1, or the dealer / P2).  Every trial must show that

* the data owner stops with one clear ``error:`` line naming the failed participant and the resume command
  (exit code 3), no traceback, within its deadline (the cluster's call deadline plus the client's probe);
* its checkpoint loads (nothing torn) and holds every generation completed before the fault: at most the
  generation in flight is lost;
* once the victim is back (restarted after a kill, SIGCONT after a pause), ``secp-tune resume`` finishes
  the run with the same trajectory and result as the reference: same candidates (CMA-ES is rank-based and
  its random state is in the checkpoint), same best prompt, the same losses up to the fixed-point noise of
  secure evaluation (``LOSS_TOL``, at 24 fractional bits);
* afterwards no server holds any job (neither the resumed run's nor the interrupted one's).

Trials per suite: ``scale(3, 20)`` (3 in `make test`, so the dealer or P2 is a victim there too; 20 in
`make test-security`).  The last test kills
the data owner itself at random instants (``scale(2, 20)`` kills): no torn file, ever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_models import ONE_LAYER, make_tiny_model
from security_report import record, scale
from test_data_owner_common import synthetic_rows, write_split, write_task

from cluster_ops.testing import running_cluster
from data_owner.checkpoint import load_checkpoint
from data_owner.cli import EXIT_CLUSTER, main
from data_owner.client import PROBE_TIMEOUT_S, ClusterClient
from data_owner.config import RunConfig
from data_owner.runfolder import CHECKPOINT, CONFIG, RunFolder
from data_owner.tuner import Tuner
from model_owner.share import share_model

pytestmark = [pytest.mark.security, pytest.mark.slow, pytest.mark.timeout(3600)]

DEADLINE_S = 10.0  # the data owner's call deadline (limits.call_deadline_s); JobStatus calls use 10 s too
PEER_TIMEOUT_S = 4.0  # the servers give up on a silent peer after this
ERROR_BOUND_S = DEADLINE_S + PROBE_TIMEOUT_S + 5.0  # + slack for two loaded cores
POPSIZE, GENERATIONS = 4, 6
FRAC_BITS = 24  # secure losses of one candidate differ between jobs by about 3e-6 (1e-4 at 16 bits)
LOSS_TOL = 1e-4
MARGIN = 1e-3  # the reference's closest candidates must be this far apart (300 times the noise)
SEED = 20261129
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Trial:
    index: int
    victim: int
    fault: str  # "kill" | "pause"
    after: int  # completed generations (history lines - 1) before the fault
    fraction: float  # then this fraction of a generation's time


def plan(suite: str, count: int) -> list[Trial]:
    """Seeded random fault points; the victims and both faults are all covered when count >= 6."""
    rng = np.random.default_rng([SEED, 2 if suite == "2pc" else 3])
    trials = []
    for i in range(count):
        victim, fault = (i % 3, ("kill", "pause")[(i // 3) % 2]) if i < 6 else (int(rng.integers(3)), None)
        trials.append(
            Trial(
                index=i,
                victim=victim,
                fault=fault or str(rng.choice(["kill", "pause"])),
                after=int(rng.integers(0, GENERATIONS)),
                fraction=float(rng.uniform(0.0, 0.5)),
            )
        )
    return trials


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A one-layer, 16-wide random BERT and 4 training / 4 dev examples: a generation takes under a second."""
    root = tmp_path_factory.mktemp("faults")
    model = make_tiny_model(
        root / "model",
        mlm=False,
        seed=3,
        **ONE_LAYER,
    )
    data = root / "data"
    data.mkdir()
    write_split(data / "train.tsv", synthetic_rows(2, 1))
    write_split(data / "dev.tsv", synthetic_rows(2, 2))
    return model, data, write_task(root)


def options(run_model: Path, data: Path, task: Path, cluster: Path, suite: str) -> dict[str, object]:
    """The run's configuration (RunConfig fields); the CLI gets the same as options."""
    return {
        "task": str(task),
        "data_dir": str(data),
        "model": str(run_model),
        "backend": "secure",
        "suite": suite,
        "cluster": str(cluster),
        "placeholder": "[UNK]",
        "prompt_length": 2,
        "intrinsic_dim": 4,
        "popsize": POPSIZE,
        "budget": POPSIZE * GENERATIONS,
        "eval_every": 2 * POPSIZE,
        "seed": 8,
        "alpha": 16.0,  # large prompts: candidates' losses far apart (see MARGIN)
        "max_length": 16,
    }


def run_args(run: Path, opts: dict[str, object]) -> list[str]:
    flags = [x for key, value in opts.items() for x in (f"--{key.replace('_', '-')}", str(value))]
    return ["run", *flags, "--out", str(run), "--quiet", "--json"]


def reference_run(opts: dict[str, object], ref: Path) -> None:
    """The uninterrupted run, in process, recording every candidate's loss and dev logits to show that the
    comparison is meaningful: secure evaluation is exact only up to fixed-point rounding (random masks
    round differently in every job), so two runs follow the same candidates only while no two losses
    (or a dev example's two class scores) are closer than that noise."""
    tuner = Tuner.start(RunConfig.model_validate(opts), ref)
    oracle, losses, logits = tuner.s.oracle, [], []
    train, dev = oracle.losses, oracle.logits
    oracle.losses = lambda prompts, split="train": _keep(losses, train(prompts, split))
    oracle.logits = lambda prompts, split: _keep(logits, dev(prompts, split))
    tuner.run()
    gaps = min(float(np.diff(np.sort(v)).min()) for v in losses)
    scores = min(float(np.abs(np.diff(v, axis=-1)).min()) for v in logits)
    dev_losses = np.sort(
        [v for r in RunFolder(ref).read_history() for k, v in r.get("dev", {}).items() if k.endswith("loss")]
    )
    dev_gap = float(np.diff(dev_losses).min())
    assert min(gaps, scores, dev_gap) > MARGIN, (
        f"candidates too close for a meaningful comparison (loss gap {gaps:.2e}, "
        f"class-score gap {scores:.2e}, dev-loss gap {dev_gap:.2e}, need {MARGIN:g}): choose another seed"
    )


def _keep(store: list, value: np.ndarray) -> np.ndarray:
    store.append(np.asarray(value))
    return value


def history_lines(run: Path) -> int:
    return len(RunFolder(run).read_history())


def trajectory(run: Path) -> list[dict]:
    """What must agree with the reference: everything but timing and traffic (a resumed run re-uploads)."""
    skip = {"seconds", "bytes_sent", "bytes_received", "server_bytes", "server_rounds"}
    return [{k: v for k, v in r.items() if k not in skip} for r in RunFolder(run).read_history()]


def assert_same_result(run: Path, ref: Path) -> None:
    got, want = trajectory(run), trajectory(ref)
    assert len(got) == len(want) == GENERATIONS + 1
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys(), a["generation"]
        for key in a:
            if key == "dev":
                assert a[key].keys() == b[key].keys()
                for k, v in a[key].items():
                    if k.startswith("z_"):
                        assert v == b[key][k], (a["generation"], k)  # the same candidates exactly
                    elif isinstance(v, float):
                        assert abs(v - b[key][k]) <= LOSS_TOL, (a["generation"], k, v, b[key][k])
                    else:
                        assert v == b[key][k], (a["generation"], k)
            elif isinstance(a[key], float) and key != "sigma":
                assert abs(a[key] - b[key]) <= LOSS_TOL, (a["generation"], key, a[key], b[key])
            else:
                assert a[key] == b[key], (a["generation"], key, a[key], b[key])
    configs = [json.loads((p / CONFIG).read_text())["config"] for p in (run, ref)]
    assert configs[0] == configs[1], "the CLI run and the reference differ in configuration"
    report, reference = (json.loads((p / "report.json").read_text()) for p in (run, ref))
    for key in ("status", "calls", "best_dev", "best_calls"):
        assert report[key] == reference[key], key
    assert np.array_equal(np.load(run / "prompt.npy"), np.load(ref / "prompt.npy"))


def wait_for(predicate, timeout_s: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def no_open_jobs(client: ClusterClient) -> bool:
    try:
        return all(info.open_jobs == 0 for info in client.server_info().values())
    except Exception:
        return False


def run_trial(trial: Trial, args: list[str], run: Path, ref: Path, cluster, client, gen_s: float) -> float:
    """One fault and its recovery; returns the seconds from the fault to the data owner's error."""
    outcome: dict = {}

    def tune() -> None:
        outcome["result"] = CliRunner().invoke(main, args, catch_exceptions=False)
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=tune, name=f"tune-{trial.index}")
    worker.start()
    assert wait_for(lambda: history_lines(run) > trial.after or not worker.is_alive(), 120)
    assert worker.is_alive(), f"the run ended before the fault: {outcome.get('result')}"
    time.sleep(trial.fraction * gen_s)
    faulted = time.monotonic()
    if trial.fault == "kill":
        cluster.kill_one(trial.victim)
    else:
        cluster.signal_one(trial.victim, signal.SIGSTOP)
    try:
        worker.join(ERROR_BOUND_S + 30)
        assert not worker.is_alive(), "the data owner is still waiting"
        seconds = outcome["ended"] - faulted
        res = outcome["result"]
        assert res.exit_code == EXIT_CLUSTER, (res.exit_code, res.output)
        error = " ".join(res.stderr.split())  # rich wraps the line at 160 columns
        assert "error: the cluster failed" in error, error
        assert "Traceback" not in res.output
        assert f"participant {trial.victim} " in error and "unreachable" in error, error
        assert f"continue with: secp-tune resume {run}" in error, error
        assert seconds <= ERROR_BOUND_S, f"the error took {seconds:.1f} s"
        # the checkpoint is whole and holds everything completed before the fault
        state = load_checkpoint(run / CHECKPOINT)
        assert trial.after <= state["generation"] < GENERATIONS and not state["finished"]
        assert history_lines(run) >= state["history_lines"] == state["generation"] + 1
    finally:
        if trial.fault == "kill":
            cluster.start_one(trial.victim)
        else:
            cluster.signal_one(trial.victim, signal.SIGCONT)
        cluster.wait_serving(timeout_s=30)
    res = CliRunner().invoke(main, ["resume", str(run), "--quiet", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert_same_result(run, ref)
    # nothing is left on any server: neither the resumed run's job nor the one the fault interrupted (a
    # server that was paused misses the data owner's close; resume closes that job again)
    assert wait_for(lambda: no_open_jobs(client), 3 * PEER_TIMEOUT_S, 0.2), "a server kept a job"
    return seconds


@pytest.mark.parametrize("suite", ["2pc", "3pc"])
def test_a_fault_at_a_random_point_is_reported_and_the_run_resumes(tmp_path: Path, tiny, suite: str) -> None:
    model, data, task = tiny
    share_model(model, suite, tmp_path / "cluster" / "model", frac_bits=FRAC_BITS)
    limits = {"call_deadline_s": DEADLINE_S, "peer_timeout_s": PEER_TIMEOUT_S, "connect_timeout_s": 5}
    with (
        running_cluster(tmp_path / "cluster", suite, model="model", frac_bits=FRAC_BITS, limits=limits) as (
            config,
            cluster,
        ),
        ClusterClient(config) as client,
    ):
        opts = options(
            tmp_path / "cluster" / "model", data, task, tmp_path / "cluster" / "cluster.yaml", suite
        )
        ref = tmp_path / "ref"
        reference_run(opts, ref)
        gen_s = min(r["seconds"] for r in RunFolder(ref).read_history()[1:])
        trials = plan(suite, scale(3, 20))
        failures: list[str] = []
        seconds: list[float] = []
        started = time.monotonic()
        for trial in trials:
            run = tmp_path / f"trial{trial.index}"
            try:
                seconds.append(
                    run_trial(
                        trial,
                        run_args(run, opts),
                        run,
                        ref,
                        cluster,
                        client,
                        gen_s,
                    )
                )
            except AssertionError as exc:
                failures.append(f"{trial}: {exc}")
        per_trial = (time.monotonic() - started) / len(trials)
    note = (
        f"error after the fault: max {max(seconds, default=0):.1f} s, mean {np.mean(seconds or [0]):.1f} s "
        f"(bound {ERROR_BOUND_S:g} s); {per_trial:.1f} s per trial"
    )
    record(
        f"faults: kill/pause one server ({suite})",
        len(trials),
        len(failures),
        len(trials) - len(failures),
        note,
    )
    print(f"\n{suite}: {len(trials) - len(failures)}/{len(trials)} trials survived; {note}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------- the data owner killed
#: generations of the killed run: --budget 360 / --popsize 6 in plain_args
KILL_GENERATIONS = 60


def plain_args(cmd: str, run: Path, tiny_plain: tuple[Path, Path, Path]) -> list[str]:
    if cmd == "resume":
        return ["resume", str(run), "--quiet"]
    model, data, task = tiny_plain
    return [
        *("run", "--task", str(task), "--data-dir", str(data), "--model", str(model), "--out", str(run)),
        *("--backend", "plain", "--placeholder", "[UNK]", "-L", "3", "-d", "8", "--popsize", "6"),
        *("--budget", "360", "--eval-every", "60", "--seed", "3", "--max-length", "32", "--quiet"),
    ]


def launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "data_owner.cli", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def checkpoint_after(run: Path, moment: float) -> bool:
    try:
        return (run / CHECKPOINT).stat().st_mtime > moment
    except OSError:
        return False


def check_after_kill(run: Path, previous_generation: int) -> tuple[int, bool]:
    """The run folder a SIGKILL left: nothing torn, at most the generation in flight lost.
    Returns the checkpoint's generation and whether the run had finished."""
    if not run.exists():  # killed during set-up: only the hidden partial folder may be left
        return previous_generation, False
    json.loads((run / CONFIG).read_text())
    state = load_checkpoint(run / CHECKPOINT)  # raises on a torn file
    prompt = np.load(run / "prompt.npy")
    assert prompt.shape == (3, 32) and np.all(np.isfinite(prompt))
    lines = (run / "history.jsonl").read_text().split("\n")
    for line in lines[:-2]:  # only the last line may be cut by the kill
        json.loads(line)
    valid = len(RunFolder(run).read_history())
    assert valid - state["history_lines"] in (0, 1), (valid, state["history_lines"])  # <= 1 generation lost
    assert state["generation"] >= previous_generation  # a checkpoint never goes back
    return state["generation"], bool(state["finished"])


def test_a_data_owner_killed_at_random_points_never_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    """SIGKILL the data owner (``secp-tune run``, then ``resume``, again and again) at seeded random
    instants: every time the run folder is whole (config, checkpoint, prompt load; history intact up to a
    cut last line), and the run finally resumed to the end equals an uninterrupted run exactly."""
    from test_data_owner_common import tiny_setup

    tiny_plain = tiny_setup(tmp_path / "tiny")
    ref, run = tmp_path / "ref", tmp_path / "run"
    started = time.monotonic()
    proc = launch(plain_args("run", ref, tiny_plain))
    assert wait_for(lambda: ref.exists() or proc.poll() is not None, 120, 0.005)
    ready_s = time.monotonic() - started
    assert proc.wait(120) == 0, proc.stderr.read().decode()
    rng = np.random.default_rng([SEED, 9])
    kills, generation, landed, attempts = scale(2, 20), 0, 0, 0
    # Up to three extra kills, all while tuning, if none of the planned ones landed there: under load a
    # planned kill can still come too late (the process finished first), and the check below needs one.
    while attempts < kills or (landed == 0 and attempts < kills + 3):
        planned = attempts < kills
        attempts += 1
        launched = time.time()
        proc = launch(plain_args("resume" if run.exists() else "run", run, tiny_plain))
        if planned and rng.uniform() < 0.2:  # during set-up (reading data, encoding, scoring zero-shot)
            time.sleep(rng.uniform(0, ready_s))
        else:  # while tuning: at a seeded random generation ahead of this process's first checkpoint, then
            # anywhere within one generation.  Progress, not elapsed time, picks the generation, and this
            # process's own pace sets the last wait: the reference run's pace, under other load, once made
            # every kill land after the run ended.
            wait_for(lambda t=launched, p=proc: checkpoint_after(run, t) or p.poll() is not None, 120, 0.005)
            done, tuning_from = history_lines(run), time.monotonic()
            target = int(rng.integers(done + 1, max(done + 2, KILL_GENERATIONS - 4)))
            wait_for(lambda p=proc, g=target: history_lines(run) >= g or p.poll() is not None, 120, 0.005)
            generation_s = (time.monotonic() - tuning_from) / max(1, history_lines(run) - done)
            time.sleep(rng.uniform(0, generation_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        generation, finished = check_after_kill(run, generation)
        landed += run.exists() and not finished
    proc = launch(plain_args("resume" if run.exists() else "run", run, tiny_plain))
    assert proc.wait(120) == 0, proc.stderr.read().decode()

    def strip(folder: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in RunFolder(folder).read_history()]

    assert landed >= 1, "no kill landed while the run was tuning"
    assert strip(run) == strip(ref)
    assert (run / "prompt.npy").read_bytes() == (ref / "prompt.npy").read_bytes()
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name], "temporary files left behind"
    note = f"{landed} kills during tuning"
    record("faults: data owner SIGKILLed at random points", attempts, 0, attempts, note)
