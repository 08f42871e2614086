"""One generation, one call per participant (``Generate``): the candidates' shares inline, the evaluation,
and the result shares and statistics back; every refusal names its cause and changes nothing."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cluster_ops.testing import running_cluster
from contract.channels import channel_credentials, channel_options, load_credentials
from data_owner.client import ClusterClient
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class
from proto.api import party_pb2, party_pb2_grpc
from proto.shares import share_chunks

pytestmark = pytest.mark.timeout(180)

FP = FixedPoint()
Code = grpc.StatusCode
rng = np.random.default_rng(11)
SECRETS = {
    "x": rng.integers(-(2**40), 2**40, size=(5, 7)),
    "w": rng.integers(-(2**20), 2**20, size=(7, 3)),
    "b": rng.integers(-(2**62), 2**62, size=3),
}
RING = {n: v.astype(np.int64).view(np.uint64) for n, v in SECRETS.items()}
with np.errstate(over="ignore"):
    EXPECTED = RING["x"] @ RING["w"] + RING["b"]


@pytest.fixture(scope="module", params=["2pc", "3pc"])
def cluster(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"generate-{request.param}")
    with running_cluster(folder, request.param) as (config, _), ClusterClient(config) as client:
        yield request.param, client


def _state(client: ClusterClient, job_id: str) -> dict:
    """Every participant's view of a job: state, batches done, uploads (what a refusal must not change)."""
    out = {}
    for p in client.participants:
        reply = client.unary("JobStatus", party_pb2.JobRef(job_id=job_id), 5.0)(p)
        out[p] = (reply.state, reply.batches_done, sorted((t.name, tuple(t.shape)) for t in reply.uploaded))
    return out


def _raw_generate(client: ClusterClient, participant: int, messages: list) -> tuple[grpc.StatusCode, str]:
    try:
        list(client.stub(participant).Generate(iter(messages), timeout=10, metadata=client.metadata))
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


def _share_messages(job_id: str, name: str, share: np.ndarray) -> list:
    header = party_pb2.ShareHeader(
        job_id=job_id, name=name, dtype="<u8", shape=share.shape, nbytes=share.nbytes
    )
    return [
        party_pb2.GenerateRequest(share=c)
        for c in share_chunks(header, share, 1 << 20, party_pb2.UploadChunk)
    ]


def _evaluate(job_id: str, batch: int, names=("x", "w", "b")) -> party_pb2.GenerateRequest:
    return party_pb2.GenerateRequest(
        evaluate=party_pb2.EvaluateRequest(
            job_id=job_id,
            batch=batch,
            inputs=[party_pb2.TensorInfo(name=n, shape=SECRETS[n].shape) for n in names],
            params_json='{"integer": true}',
        )
    )


def test_one_call_gives_the_result_and_the_statistics(cluster):
    """Inline shares of every input, then the same job again with only x inline: exact results both times,
    equal to the four-call path (upload, evaluate, fetch, status)."""
    _suite, client = cluster
    job = client.open_job("affine")
    first = job.generate(RING, ["x", "w", "b"], params={"integer": True}, reveal=["y"], prg=PRG(bytes(16)))
    assert first.outputs["y"].shape == (5, 3) and first.outputs["y"].scale == 0
    assert np.array_equal(first.values["y"], EXPECTED)
    assert set(first.metrics) == set(client.participants)
    assert all(m["batches"] == 1 for m in first.metrics.values())
    assert sum(op["rounds"] for op in first.metrics[0]["ops"].values()) > 0
    assert first.metrics[0]["wire"]["bytes_sent"] > 0

    x2 = rng.integers(-(2**40), 2**40, size=(5, 7)).astype(np.int64).view(np.uint64)
    second = job.generate({"x": x2}, ["x", "w", "b"], params={"integer": True}, reveal=["y"])
    with np.errstate(over="ignore"):
        assert np.array_equal(second.values["y"], x2 @ RING["w"] + RING["b"])
    assert all(m["batches"] == 2 for m in second.metrics.values())
    # the inline share replaced the stored one: the four-call path sees the same inputs
    job.evaluate(params={"integer": True})
    assert np.array_equal(job.reveal("y"), second.values["y"])
    job.close()


def test_refusals_name_the_cause_and_change_nothing(cluster):
    suite, client = cluster
    job = client.open_job("affine")
    job.generate(RING, ["x", "w", "b"], params={"integer": True}, reveal=["y"])
    before = _state(client, job.job_id)
    share = suite_class(suite).split(RING["x"] + np.uint64(1), PRG(bytes(16)))[0]
    x_msgs = _share_messages(job.job_id, "x", share)
    wrong_shape = _share_messages(job.job_id, "x", np.ascontiguousarray(share[..., :2]))
    other = client.open_job("affine")
    cases = {
        "wrong batch": ([*x_msgs, _evaluate(job.job_id, 7)], Code.INVALID_ARGUMENT, "expects batch 1 next"),
        "inline share of the wrong shape": (
            [*wrong_shape, _evaluate(job.job_id, 1)],
            Code.INVALID_ARGUMENT,
            "is declared (5, 7) but its uploaded share has (5, 2)",
        ),
        "no evaluation": (x_msgs, Code.INVALID_ARGUMENT, "must end with its evaluation"),
        "a share after the evaluation": (
            [_evaluate(job.job_id, 1), *x_msgs],
            Code.INVALID_ARGUMENT,
            "must be the last message",
        ),
        "the same share twice": (
            x_msgs + x_msgs + [_evaluate(job.job_id, 1)],
            Code.INVALID_ARGUMENT,
            "is sent twice",
        ),
        "shares and evaluation for different jobs": (
            [*x_msgs, _evaluate(other.job_id, 0)],
            Code.INVALID_ARGUMENT,
            "must name the job its shares were sent to",
        ),
        "an empty message": (
            [party_pb2.GenerateRequest(), _evaluate(job.job_id, 1)],
            Code.INVALID_ARGUMENT,
            "must carry a share chunk or the evaluation",
        ),
        "a chunk without a header first": (
            [
                party_pb2.GenerateRequest(share=party_pb2.UploadChunk(data=b"\0" * 8)),
                _evaluate(job.job_id, 1),
            ],
            Code.INVALID_ARGUMENT,
            "must carry its header",
        ),
        "a truncated share": (
            [
                party_pb2.GenerateRequest(
                    share=party_pb2.UploadChunk(header=x_msgs[0].share.header, data=b"\0" * 8)
                ),
                _evaluate(job.job_id, 1),
            ],
            Code.INVALID_ARGUMENT,
            "",
        ),
    }
    for what, (messages, code, needle) in cases.items():
        got, details = _raw_generate(client, 0, messages)
        assert got == code and needle in details, (what, got, details)
        assert _state(client, job.job_id) == before, what
    if suite == "2pc":  # the dealer holds no shares
        got, details = _raw_generate(client, 2, [*x_msgs, _evaluate(job.job_id, 1)])
        assert got == Code.FAILED_PRECONDITION and "the dealer holds no shares" in details
        assert _state(client, job.job_id) == before
    # a server's certificate may not call it (only the registered data owner may)
    config = client.config
    creds = channel_credentials(load_credentials(config, config.party(1).name))
    party = config.party(0)
    with grpc.secure_channel(party.address, creds, options=channel_options(party.name, 1 << 20)) as channel:
        stub = party_pb2_grpc.PartyStub(channel)
        try:
            list(stub.Generate(iter([*x_msgs, _evaluate(job.job_id, 1)]), timeout=10))
            got, details = Code.OK, ""
        except grpc.RpcError as exc:
            got, details = exc.code(), exc.details() or ""
    assert got == Code.PERMISSION_DENIED and "only the registered data owner" in details
    assert _state(client, job.job_id) == before
    # the job still works after every refusal
    again = job.generate({}, ["x", "w", "b"], params={"integer": True}, reveal=["y"])
    assert np.array_equal(again.values["y"], EXPECTED)
    other.close()
    job.close()
