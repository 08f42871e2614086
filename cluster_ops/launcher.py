"""Start, watch and stop a cluster's servers as local processes (``secp-cluster`` and the tests).

Each server runs ``python -m server.cli`` in its own session (process group), so stopping it stops
everything it started; its output goes to ``RUN_DIR/logs/NAME.log``.  ``RUN_DIR/processes.json``
records what was started so that ``secp-cluster down`` and ``status`` work from another shell; a pid
is only signalled after checking that it still runs ``server.cli`` with this cluster's configuration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel

from contract.channels import Credentials, channel_credentials, channel_options, identity_metadata
from contract.cluster import ClusterConfig

STATE_FILE = "processes.json"


class ProcessRecord(BaseModel):
    participant: int
    name: str
    pid: int
    log: str


class RunState(BaseModel):
    config: str
    insecure: bool
    started: float
    processes: list[ProcessRecord]


def health_status(
    address: str,
    server_name: str,
    credentials: Credentials | None,
    timeout_s: float = 2.0,
    caller: str = "secp-health",
) -> str:
    """SERVING, NOT_SERVING, ... or UNREACHABLE (standard gRPC health checking, mutual TLS)."""
    options = channel_options(None if credentials is None else server_name, 1 << 20)
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, channel_credentials(credentials), options=options)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""),
            timeout=timeout_s,
            metadata=identity_metadata(caller, credentials is None),
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"
    finally:
        channel.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_our_server(pid: int, config_path: str) -> bool:
    """Whether ``pid`` is alive and is a secp server of this configuration (guards against pid reuse)."""
    line = _cmdline(pid)
    return "server.cli" in line and config_path in line


class LocalCluster:
    """The servers of one configuration as child processes of this one (or of an earlier ``up``)."""

    def __init__(
        self,
        config: ClusterConfig,
        config_path: str | Path,
        *,
        insecure: bool = False,
        run_dir: Path | None = None,
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.config_path = str(Path(config_path).absolute())
        self.insecure = insecure
        self.run_dir = Path(run_dir or config.run_dir)
        self.python = python
        self.extra_env = extra_env or {}
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def log_path(self, participant: int) -> Path:
        return self.log_dir / f"{self.config.party(participant).name}.log"

    def command(self, participant: int) -> list[str]:
        role = self.config.party(participant).role
        cmd = [self.python, "-m", "server.cli", "--config", self.config_path]
        cmd += ["--role", "dealer"] if role == "dealer" else ["--party", str(participant)]
        return cmd + (["--insecure"] if self.insecure else [])

    # ------------------------------------------------------------------ start
    def start_one(self, participant: int) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.log_path(participant), "ab") as log:
            proc = subprocess.Popen(
                self.command(participant),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.procs[participant] = proc
        self._write_state()
        return proc

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every participant and wait until all report SERVING (stops them all on failure)."""
        for party in self.config.parties:
            self.start_one(party.participant)
        try:
            self.wait_serving(timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_serving(self, participants: list[int] | None = None, timeout_s: float = 60.0) -> None:
        targets = participants if participants is not None else [p.participant for p in self.config.parties]
        deadline = time.monotonic() + timeout_s
        pending = list(targets)
        while pending:
            for p in list(pending):
                proc = self.procs.get(p)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.config.party(p).name} exited with code {proc.returncode} during start-up; "
                        f"see {self.log_path(p)}:\n{self.tail(p)}"
                    )
                if self.health(p) == "SERVING":
                    pending.remove(p)
            if pending and time.monotonic() > deadline:
                names = [self.config.party(p).name for p in pending]
                raise TimeoutError(f"{names} not serving after {timeout_s:g} s; see logs in {self.log_dir}")
            if pending:
                time.sleep(0.1)

    def health(self, participant: int) -> str:
        party = self.config.party(participant)
        return health_status(party.address, party.name, self._health_credentials(), caller=party.name)

    def _health_credentials(self) -> Credentials | None:
        if self.insecure:
            return None
        from contract.channels import load_credentials

        return load_credentials(self.config, self.config.data_owner.name)

    def tail(self, participant: int, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path(participant).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ stop
    def signal_one(self, participant: int, sig: int) -> None:
        proc = self.procs.get(participant)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def kill_one(self, participant: int) -> None:
        """SIGKILL one server (fault injection): no clean shutdown, its peers see broken streams."""
        self.signal_one(participant, signal.SIGKILL)
        proc = self.procs.get(participant)
        if proc is not None:
            proc.wait(timeout=10)

    def stop_one(self, participant: int, timeout_s: float = 10.0) -> None:
        proc = self.procs.get(participant)
        if proc is None:
            return
        self.signal_one(participant, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal_one(participant, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        for p in list(self.procs):
            self.signal_one(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal_one(p, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        with contextlib.suppress(OSError):
            (self.run_dir / STATE_FILE).unlink()

    # ------------------------------------------------------------------ state for other shells
    def _write_state(self) -> None:
        state = RunState(
            config=self.config_path,
            insecure=self.insecure,
            started=time.time(),
            processes=[
                ProcessRecord(
                    participant=p, name=self.config.party(p).name, pid=proc.pid, log=str(self.log_path(p))
                )
                for p, proc in self.procs.items()
            ],
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(state.model_dump_json(indent=2))
        os.replace(tmp, self.run_dir / STATE_FILE)


def read_state(run_dir: Path) -> RunState | None:
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    return RunState.model_validate_json(path.read_text())


def stop_recorded(run_dir: Path, timeout_s: float = 10.0) -> list[str]:
    """Stop the servers recorded by an earlier ``up`` (only pids still running our server)."""
    state = read_state(run_dir)
    if state is None:
        return []
    stopped = []
    live = [r for r in state.processes if is_our_server(r.pid, state.config)]
    for record in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for record in live:
        while is_our_server(record.pid, state.config) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_our_server(record.pid, state.config):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
        stopped.append(record.name)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped
