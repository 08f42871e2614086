"""Access control and malformed requests against a real 2pc cluster (mutual TLS).

Every refusal must carry a definite status code and a clear message, change no state, and leave the
server serving: each test ends by checking the legitimate job still works or is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from cluster_ops.certs import create_authority, issue, load_authority, write_private
from cluster_ops.testing import running_cluster
from contract.channels import channel_options
from data_owner.client import ClusterClient, ClusterError
from mpc_core.prg import system_prg
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class
from proto.api import party_pb2, party_pb2_grpc, peer_pb2, peer_pb2_grpc
from server.jobs import JobSpec

pytestmark = pytest.mark.timeout(180)

FP = FixedPoint()
MAX_MESSAGE = 256 * 1024
MAX_UPLOAD = 1 << 20
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("security")
    limits = {"max_message_bytes": MAX_MESSAGE, "max_upload_bytes": MAX_UPLOAD}
    with running_cluster(folder, "2pc", limits=limits) as (config, _), ClusterClient(config) as client:
        certs = config.tls.dir
        authority = load_authority(certs / "ca.pem", certs / "ca.key")
        cert, key = issue(authority, "mallory")  # signed by the cluster's CA, but not in the config
        (certs / "mallory.pem").write_bytes(cert)
        write_private(certs / "mallory.key", key)
        rogue = create_authority("rogue CA")
        cert, key = issue(rogue, config.data_owner.name)  # the data owner's name, another CA
        (certs / "rogue-owner.pem").write_bytes(cert)
        write_private(certs / "rogue-owner.key", key)
        job = client.open_job("affine")
        rng = np.random.default_rng(0)
        x, w, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=2)
        for name, value in {"x": x, "w": w, "b": b}.items():
            job.upload(name, FP.encode(value))
        yield config, client, job, (x @ w + b)


def _channel(config, participant: int, cert: str | None, key: str | None = None, expect: str | None = None):
    party = config.party(participant)
    tls = config.tls
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_path().read_bytes(),
        private_key=(tls.dir / key).read_bytes() if key else None,
        certificate_chain=(tls.dir / cert).read_bytes() if cert else None,
    )
    return grpc.secure_channel(
        party.address, creds, options=channel_options(expect or party.name, MAX_MESSAGE)
    )


def _code(fn: Callable[[], object]) -> tuple[Code, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details() or ""


def _open_jobs(client: ClusterClient) -> dict[int, int]:
    return {p: info.open_jobs for p, info in client.server_info().items()}


def _uploaded(job) -> dict[int, list[tuple[str, tuple[int, ...]]]]:
    return {p: sorted((t.name, tuple(t.shape)) for t in s.uploaded) for p, s in job.status().items()}


def _still_serving(env) -> None:
    """The legitimate job still evaluates correctly after whatever the test sent."""
    _, _, job, expected = env
    job.evaluate()
    assert np.allclose(job.reveal_float("y"), expected, atol=1e-3)


# ---------------------------------------------------------------------------------------- identities
@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_unverifiable_clients_are_refused_at_the_handshake(env, who):
    """The server requires a client certificate from the cluster CA: the TLS handshake fails before any
    RPC reaches the application (gRPC reports that to the caller as UNAVAILABLE)."""
    config, client, _, _ = env
    before = _open_jobs(client)
    cert, key = (None, None) if who == "no certificate" else ("rogue-owner.pem", "rogue-owner.key")
    for p in range(3):
        stub = party_pb2_grpc.PartyStub(_channel(config, p, cert, key))
        request = party_pb2.OpenJobRequest(
            job_id="intruder", spec=party_pb2.JobSpec(program="affine", suite="2pc")
        )
        code, _ = _code(lambda stub=stub, request=request: stub.OpenJob(request, timeout=5))
        assert code == Code.UNAVAILABLE
    assert _open_jobs(client) == before
    _still_serving(env)


def test_certificate_not_in_config_is_permission_denied(env):
    config, client, job, _ = env
    before = _open_jobs(client)
    for p in range(3):
        stub = party_pb2_grpc.PartyStub(_channel(config, p, "mallory.pem", "mallory.key"))
        code, details = _code(lambda stub=stub: stub.ServerInfo(party_pb2.ServerInfoRequest(), timeout=5))
        assert code == Code.PERMISSION_DENIED and "'mallory' may not call the party API" in details
        request = party_pb2.OpenJobRequest(
            job_id="mallory-job", spec=party_pb2.JobSpec(program="affine", suite="2pc", frac_bits=16)
        )
        assert (
            _code(lambda stub=stub, request=request: stub.OpenJob(request, timeout=5))[0]
            == Code.PERMISSION_DENIED
        )
        ref = party_pb2.JobRef(job_id=job.job_id)
        assert _code(lambda stub=stub, ref=ref: stub.CloseJob(ref, timeout=5))[0] == Code.PERMISSION_DENIED
    assert _open_jobs(client) == before
    client.open_job("affine", job_id="mallory-job").close()  # the id mallory tried was never taken
    _still_serving(env)


def test_a_partys_certificate_may_not_call_the_party_api(env):
    config, _, job, _ = env
    stub = party_pb2_grpc.PartyStub(_channel(config, 0, "p1.pem", "p1.key"))
    code, details = _code(lambda: stub.JobStatus(party_pb2.JobRef(job_id=job.job_id), timeout=5))
    assert code == Code.PERMISSION_DENIED and "only the registered data owner" in details
    _still_serving(env)


def test_client_pins_the_servers_identity(env):
    """A client expecting P1 but reaching P0's address refuses P0's certificate."""
    config, _, _, _ = env
    stub = party_pb2_grpc.PartyStub(_channel(config, 0, "owner.pem", "owner.key", expect="p1"))
    assert _code(lambda: stub.ServerInfo(party_pb2.ServerInfoRequest(), timeout=5))[0] == Code.UNAVAILABLE


def _hello(job_id: str, participant: int, digest: bytes) -> peer_pb2.PeerFrame:
    return peer_pb2.PeerFrame(
        hello=peer_pb2.Hello(job_id=job_id, participant=participant, spec_digest=digest)
    )


def _exchange(config, target: int, cert: str, frame: peer_pb2.PeerFrame) -> tuple[Code, str]:
    stub = peer_pb2_grpc.PeerStub(_channel(config, target, f"{cert}.pem", f"{cert}.key"))
    return _code(lambda: next(iter(stub.Exchange(iter([frame]), timeout=5))))


def test_peer_api_refuses_everyone_but_configured_peers(env):
    config, _, job, _ = env
    digest = JobSpec(program="affine", suite="2pc", frac_bits=16).digest(job.job_id)
    # the data owner and an unknown certificate are not peers
    code, details = _exchange(config, 1, "owner", _hello(job.job_id, 0, digest))
    assert code == Code.PERMISSION_DENIED and "not a configured peer" in details
    assert _exchange(config, 1, "mallory", _hello(job.job_id, 0, digest))[0] == Code.PERMISSION_DENIED
    # P0's certificate may not speak for P1, and P1 may not open a stream to P0 (lower opens)
    code, details = _exchange(config, 2, "p0", _hello(job.job_id, 1, digest))
    assert code == Code.PERMISSION_DENIED and "may not speak for participant 1" in details
    assert _exchange(config, 0, "p1", _hello(job.job_id, 1, digest))[0] == Code.INVALID_ARGUMENT
    # a genuine peer naming an unknown job, or the right job with another spec
    code, details = _exchange(config, 1, "p0", _hello("no-such-job", 0, digest))
    assert code == Code.NOT_FOUND and "not open" in details
    code, details = _exchange(config, 1, "p0", _hello(job.job_id, 0, b"x" * 32))
    assert code == Code.FAILED_PRECONDITION and "different spec" in details
    code, _ = _exchange(config, 1, "p0", peer_pb2.PeerFrame(data=b"no hello"))
    assert code == Code.INVALID_ARGUMENT
    _still_serving(env)


# ---------------------------------------------------------------------------------------- malformed
def test_unknown_job_is_not_found_everywhere(env):
    _, client, _, _ = env
    ref = party_pb2.JobRef(job_id="ghost")
    stub = client.stub(0)
    md = client.metadata
    for call in (
        lambda: stub.JobStatus(ref, timeout=5, metadata=md),
        lambda: stub.CloseJob(ref, timeout=5, metadata=md),
        lambda: stub.Evaluate(party_pb2.EvaluateRequest(job_id="ghost"), timeout=5, metadata=md),
        lambda: list(
            stub.FetchResult(party_pb2.FetchRequest(job_id="ghost", name="y"), timeout=5, metadata=md)
        ),
        lambda: stub.Upload(iter([_chunk("ghost", "x", (1, 2), 16, b"\0" * 16)]), timeout=5, metadata=md),
    ):
        code, details = _code(call)
        assert code == Code.NOT_FOUND and "'ghost' is not open on participant 0" in details
    _still_serving(env)


@pytest.mark.parametrize(
    ("spec", "job_id", "code", "message"),
    [
        ({"program": "affine", "suite": "3pc", "frac_bits": 16}, "j-suite", Code.INVALID_ARGUMENT, "suite"),
        (
            {"program": "affine", "suite": "2pc", "frac_bits": 12},
            "j-frac",
            Code.INVALID_ARGUMENT,
            "fractional",
        ),
        (
            {"program": "nope", "suite": "2pc", "frac_bits": 16},
            "j-prog",
            Code.INVALID_ARGUMENT,
            "unknown program",
        ),
        ({"program": "affine", "suite": "2pc", "frac_bits": 16}, "bad id!", Code.INVALID_ARGUMENT, "job_id"),
        (
            {"program": "model_linear", "suite": "2pc", "frac_bits": 16},
            "j-m",
            Code.FAILED_PRECONDITION,
            "model",
        ),
    ],
)
def test_bad_job_specs_are_refused(env, spec, job_id, code, message):
    _, client, _, _ = env
    before = _open_jobs(client)
    request = party_pb2.OpenJobRequest(job_id=job_id, spec=party_pb2.JobSpec(**spec))
    got, details = _code(lambda: client.stub(1).OpenJob(request, timeout=5, metadata=client.metadata))
    assert got == code and message in details
    assert _open_jobs(client) == before


def test_reused_job_id_is_refused(env):
    _, client, job, _ = env
    with pytest.raises(ClusterError) as info:
        client.open_job("affine", job_id=job.job_id)
    assert info.value.code == Code.ALREADY_EXISTS
    _still_serving(env)  # the refused duplicate did not close the original


def _chunk(job_id, name, shape, nbytes, data, dtype="<u8", header=True):
    if not header:
        return party_pb2.UploadChunk(data=data)
    return party_pb2.UploadChunk(
        header=party_pb2.ShareHeader(job_id=job_id, name=name, dtype=dtype, shape=shape, nbytes=nbytes),
        data=data,
    )


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("wrong dtype", Code.INVALID_ARGUMENT, "uint64"),
        ("wrong dtype length", Code.INVALID_ARGUMENT, "needs 48 bytes, the header declares 24"),
        ("short data", Code.INVALID_ARGUMENT, "ended after 40 of 48 bytes"),
        ("long data", Code.INVALID_ARGUMENT, "more than the 48 bytes"),
        ("wrong suite", Code.INVALID_ARGUMENT, "a share for another suite"),
        ("no header", Code.INVALID_ARGUMENT, "first upload chunk must carry a header"),
        ("two headers", Code.INVALID_ARGUMENT, "only the first upload chunk"),
        ("bad name", Code.INVALID_ARGUMENT, "tensor names"),
        ("declared too large", Code.INVALID_ARGUMENT, "exceeds the upload limit"),
        ("message too large", Code.RESOURCE_EXHAUSTED, ""),
        ("to the dealer", Code.FAILED_PRECONDITION, "dealer holds no shares"),
    ],
)
def test_malformed_uploads_change_nothing(env, case, code, message):
    _, client, job, _ = env
    before = _uploaded(job)
    j = job.job_id
    good = np.zeros((1, 2, 3), dtype=np.uint64).tobytes()  # a 2pc share of a 2x3 secret: 48 bytes
    chunks = {
        "wrong dtype": [_chunk(j, "x", (1, 2, 3), 48, good, dtype="<f8")],
        "wrong dtype length": [_chunk(j, "x", (1, 2, 3), 24, good[:24])],
        "short data": [_chunk(j, "x", (1, 2, 3), 48, good[:40])],
        "long data": [_chunk(j, "x", (1, 2, 3), 48, good), _chunk(j, "", (), 0, b"12345678", header=False)],
        "wrong suite": [_chunk(j, "x", (2, 2, 3), 96, good + good)],  # a 3pc share: two slots
        "no header": [_chunk(j, "x", (), 0, good, header=False)],
        "two headers": [_chunk(j, "x", (1, 2, 3), 48, good[:8]), _chunk(j, "x", (1, 2, 3), 48, good[8:])],
        "bad name": [_chunk(j, "../x", (1, 2, 3), 48, good)],
        "declared too large": [_chunk(j, "x", (1, MAX_UPLOAD // 8 + 1), MAX_UPLOAD + 8, b"")],
        "message too large": [_chunk(j, "x", (1, MAX_MESSAGE // 8), MAX_MESSAGE, b"\0" * MAX_MESSAGE)],
        "to the dealer": [_chunk(j, "x", (1, 2, 3), 48, good)],
    }[case]
    target = 2 if case == "to the dealer" else 0
    got, details = _code(
        lambda: client.stub(target).Upload(iter(chunks), timeout=10, metadata=client.metadata)
    )
    assert got == code and message in details
    assert _uploaded(job) == before
    _still_serving(env)


def _evaluate(client, job, **fields):
    request = party_pb2.EvaluateRequest(
        job_id=job.job_id,
        batch=fields.get("batch", job.next_batch),
        inputs=[party_pb2.TensorInfo(name=n, shape=s) for n, s in fields.get("inputs", job.shapes.items())],
        params_json=fields.get("params", "{}"),
    )
    return client.call_all("evaluate", client.unary("Evaluate", request, 10.0))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch": 99}, "expects batch"),
        ({"inputs": [("x", (3, 4)), ("w", (4, 2))]}, "takes inputs"),
        ({"inputs": [("x", (3, 4)), ("w", (4, 2)), ("b", (2,)), ("q", (1,))]}, "not uploaded"),
        ({"inputs": [("x", (3, 5)), ("w", (4, 2)), ("b", (2,))]}, "declared (3, 5)"),
        ({"params": '{"integer": "maybe"}'}, "invalid parameters"),
        ({"params": '{"unknown": 1}'}, "invalid parameters"),
        ({"params": "x" * 70_000}, "params_json exceeds"),
    ],
)
def test_malformed_evaluations_change_nothing(env, fields, message):
    _, client, job, _ = env
    with pytest.raises(ClusterError) as info:
        _evaluate(client, job, **fields)
    assert info.value.code == Code.INVALID_ARGUMENT
    compute = [info.value.failures[p] for p in (0, 1)]  # the dealer holds no uploads to compare
    assert all(code == Code.INVALID_ARGUMENT and message in details for code, details in compute)
    _still_serving(env)


def test_shapes_that_do_not_chain_are_refused_by_every_participant(env):
    _, client, _, _ = env
    job = client.open_job("affine")
    for name, shape in {"x": (3, 4), "w": (5, 2), "b": (2,)}.items():
        job.upload(name, FP.encode(np.ones(shape)))
    with pytest.raises(ClusterError) as info:
        job.evaluate()
    assert set(info.value.failures) == {0, 1, 2}
    assert all(c == Code.INVALID_ARGUMENT and "do not chain" in d for c, d in info.value.failures.values())
    job.upload("w", FP.encode(np.ones((4, 2))))  # fixed, the same job evaluates
    job.evaluate()
    assert np.allclose(job.reveal_float("y"), np.full((3, 2), 5.0), atol=1e-3)
    job.close()


def test_fetch_errors(env):
    _, client, job, _ = env
    _still_serving(env)
    md, batch = client.metadata, job.next_batch - 1
    stub = client.stub(0)
    code, details = _code(
        lambda: list(
            stub.FetchResult(
                party_pb2.FetchRequest(job_id=job.job_id, batch=batch + 5, name="y"), timeout=5, metadata=md
            )
        )
    )
    assert code == Code.NOT_FOUND and f"latest batch: {batch}" in details
    code, _ = _code(
        lambda: list(
            stub.FetchResult(
                party_pb2.FetchRequest(job_id=job.job_id, batch=batch, name="z"), timeout=5, metadata=md
            )
        )
    )
    assert code == Code.NOT_FOUND
    code, details = _code(
        lambda: list(
            client.stub(2).FetchResult(
                party_pb2.FetchRequest(job_id=job.job_id, batch=batch, name="y"), timeout=5, metadata=md
            )
        )
    )
    assert code == Code.FAILED_PRECONDITION and "dealer holds no result shares" in details


def test_shares_never_appear_in_errors_or_logs(env):
    """Error messages and server logs name shapes and jobs, never share values."""
    config, client, job, _ = env
    share = suite_class("2pc").split(FP.encode(np.full((2, 3), 1234.5)), system_prg())
    canaries = {str(int(v)) for s in share for v in s.ravel()}
    chunks = [_chunk(job.job_id, "x", (1, 2, 3), 48, share[0].tobytes()[:40])]
    _, details = _code(lambda: client.stub(0).Upload(iter(chunks), timeout=5, metadata=client.metadata))
    logs = "".join(p.read_text() for p in (config.run_dir / "logs").glob("*.log"))
    for canary in canaries:
        assert canary not in details and canary not in logs
