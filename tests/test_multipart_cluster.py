"""Multi-part tuning requests over gRPC (issue 18 point 2): a real 2pc cluster (three server processes,
mutual TLS) holding a tiny shared BERT evaluates every candidate on every length-sorted part of a split in
ONE ``Generate`` call per participant; a malformed multi-part generation is refused on every participant
and leaves the job as it was (no share stored, no batch counted), after which the job still answers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from helpers_models import make_tiny_model
from test_multipart import (
    LENGTHS,
    LOSS_ATOL,
    P,
    _data,
    multipart_request,
    plaintext,
)

from cluster_ops.testing import running_cluster
from data_owner.backends.secure import plan_parts
from data_owner.client import ClusterClient, ClusterError
from model_owner.share import share_model
from mpc_core.nn.weights import load_checkpoint
from mpc_core.prg import PRG
from mpc_core.ring import FixedPoint
from mpc_core.suites import suite_class

pytestmark = pytest.mark.timeout(300)

FP = FixedPoint()


def test_one_generate_call_evaluates_every_part_and_refusals_change_nothing(tmp_path) -> None:
    checkpoint = make_tiny_model(tmp_path / "tiny", "bert", mlm=True, num_hidden_layers=1)
    weights = load_checkpoint(checkpoint)
    cfg = weights[0]
    share_model(checkpoint, "2pc", tmp_path / "model")
    x, y, prompts, extra = _data(cfg, "mlm")
    parts = plan_parts(np.asarray(LENGTHS), 1.15)
    secrets, params = multipart_request(x, y, prompts, extra, "mlm", "losses", parts)
    expected = plaintext(weights, cfg, x, y, prompts, extra, "mlm", "losses", LENGTHS)
    inputs = sorted(secrets)
    prg = PRG(b"multipart-grpc!!")
    with (
        running_cluster(tmp_path, "2pc", model="model") as (config, _),
        ClusterClient(config) as client,
    ):
        job = client.open_job("prompt_tuning", model_digest=client.server_info()[0].model_digest)
        for name, value in secrets.items():
            if name != "prompts":
                job.upload_shares(name, suite_class("2pc").split(FP.encode(value), prg))
        first = job.generate({"prompts": FP.encode(prompts)}, inputs, params, ["losses"])
        losses = first.reveal_float("losses")
        assert losses.shape == (P,)
        assert np.allclose(losses, expected, atol=LOSS_ATOL), np.abs(losses - expected).max()
        before = job.status()

        # inconsistent parts (part 0 gives one length too few), with candidates of another shape inline
        bad = {**params, "parts": [dict(s) for s in params["parts"]]}
        bad["parts"][0]["lengths"] = bad["parts"][0]["lengths"][:-1]
        other = FP.encode(np.zeros((P + 1, *prompts.shape[1:])))
        # an empty part sent inline: the compute parties refuse its share's header, the dealer (who gets
        # the evaluation only) its declared shape; an empty part that got that far is the plan's to refuse
        # (tests/test_multipart.py)
        empty_part = {"name": "train.p9", "lengths": [], "mask_positions": []}
        empty = {**params, "parts": [*params["parts"], empty_part]}
        nothing = {
            "prompts": other,
            "train.p9.x": FP.encode(np.zeros((0, 4, cfg.hidden))),
            "train.p9.y": FP.encode(np.zeros((0, 2))),
        }
        for secret, request, why in [
            ({"prompts": other}, bad, ("part 'train.p0': lengths must give",)),
            (
                nothing,
                empty,
                ("positive dimensions, got shape (1, 0, 4", "'train.p9.x' has an invalid shape"),
            ),
        ]:
            with pytest.raises(ClusterError) as caught:
                job.generate(secret, sorted({*inputs, *secret}), request, ["losses"])
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value
            # a participant the client stopped waiting for reports CANCELLED; the statuses below show
            # that none of them stored anything
            codes = {code for code, _ in caught.value.failures.values()}
            assert codes <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED}, codes
            assert all(text in str(caught.value) for text in why), str(caught.value)
        after = job.status()
        for p in before:
            assert after[p].batches_done == before[p].batches_done == 1
            shapes = {t.name: tuple(t.shape) for t in after[p].uploaded}
            assert shapes == {t.name: tuple(t.shape) for t in before[p].uploaded}
            if p in client.compute_parties:  # the refused candidates were not stored
                assert shapes["prompts"] == prompts.shape
                assert "train.p9.x" not in shapes

        # the job still answers, on the candidates it held before the refusals
        again = job.generate({}, inputs, params, ["losses"]).reveal_float("losses")
        assert np.allclose(again, losses, atol=LOSS_ATOL), np.abs(again - losses).max()
        job.close()
