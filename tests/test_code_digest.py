"""Servers of different code versions are refused when their peer stream opens, not mid-batch."""

from __future__ import annotations

import types

import server.code_digest as code_digest
from server import job_state as jobs


def test_digest_follows_every_byte_of_the_protocol_packages(tmp_path, monkeypatch) -> None:
    package = tmp_path / "engine"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "kernel.py").write_text("ROUNDS = 8\n")
    fake = types.SimpleNamespace(__file__=str(package / "__init__.py"))
    monkeypatch.setattr(code_digest, "PROTOCOL_PACKAGES", (fake,))
    code_digest.protocol_code_digest.cache_clear()
    before = code_digest.protocol_code_digest()
    code_digest.protocol_code_digest.cache_clear()
    assert code_digest.protocol_code_digest() == before  # deterministic
    (package / "sub" / "kernel.py").write_text("ROUNDS = 9\n")
    code_digest.protocol_code_digest.cache_clear()
    assert code_digest.protocol_code_digest() != before
    code_digest.protocol_code_digest.cache_clear()


def test_job_spec_digest_includes_the_code_digest(monkeypatch) -> None:
    spec = jobs.JobSpec(program="op", suite="2pc", frac_bits=16)
    ours = spec.digest("job-1")
    monkeypatch.setattr(jobs, "protocol_code_digest", lambda: "another release")
    assert spec.digest("job-1") != ours
