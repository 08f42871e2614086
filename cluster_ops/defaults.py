"""The embedded single-machine cluster that ``secp-cluster`` uses without ``--config``.

It is the text of ``cluster.example.yaml`` (a test keeps the two identical), so that an installed
package works without the repository checkout.
"""

DEFAULT_CONFIG_YAML = """\
# A secp-tuning cluster on one machine: 2pc (P0, P1 and the dealer) on 127.0.0.1.
# Every process reads this one file; relative paths are relative to this file.  Validated by
# server/config.py (unknown keys are errors).  `secp-cluster up` without --config uses the same values.
name: secp-local
suite: 2pc                 # 2pc: P0, P1 + dealer (participant 2); 3pc: P0, P1, P2 (replicated sharing)
frac_bits: 16
model: null                # folder written by secp-share-model (manifest.json + one share file per party)
run_dir: .cluster/run      # secp-cluster: logs/ and processes.json

parties:                   # name = certificate identity (CN and DNS SAN) checked by every peer
  - {participant: 0, name: secp-p0, address: "127.0.0.1:50051"}
  - {participant: 1, name: secp-p1, address: "127.0.0.1:50052"}
  - {participant: 2, name: secp-dealer, address: "127.0.0.1:50053", role: dealer}

data_owner:
  name: secp-data-owner    # the only identity allowed to call the party API

tls:
  dir: .cluster/certs      # ca.pem, NAME.pem, NAME.key (secp-cluster certs)

limits:
  max_message_bytes: 1048576      # every gRPC message (tensors are chunked below it)
  max_upload_bytes: 4294967296    # one uploaded share
  max_job_bytes: 17179869184      # all uploads of one job
  max_peer_tensor_bytes: 17179869184
  max_inputs: 64
  max_jobs: 8                     # open jobs on one server
  max_server_bytes: 34359738368   # all jobs' uploads on one server, stored and in flight
  # max_memory_bytes: 8589934592  # refuse new work above this resident memory (default: 90% of RAM)
  max_params_bytes: 65536
  call_deadline_s: 3600           # the data owner's deadline for each call (a generation can take 10+ min)
  connect_timeout_s: 20           # peer stream set-up
  peer_timeout_s: 300             # longest wait for one message from a peer
  job_idle_timeout_s: 3600        # a job untouched this long is dropped
  shutdown_grace_s: 5             # SIGTERM: running batches get this long to finish, then are aborted

network:
  profile: none            # none | lan (3 Gbps, 0.8 ms) | wan (100 Mbps, 80 ms) | custom
  # bandwidth_mbps: 200    # custom only
  # latency_ms: 40         # custom only

development:
  allow_fixed_seeds: false # never true outside tests: fixed seeds make every mask predictable
"""
