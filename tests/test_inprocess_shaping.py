"""The in-process transport's emulated network, and the benchmark harness's offline/online phases."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bench.harness import link_shapes, measure
from mpc_core.transport.inprocess import InProcessNetwork
from mpc_core.transport.shaping import NO_SHAPING, NetworkShape

#: 5 MB/s and 20 ms one way: a 100 kB message occupies its link for 20 ms.
SLOW = NetworkShape("custom", bandwidth_bps=40e6, latency_s=0.02)


def test_shaped_link_delays_by_latency_and_bandwidth_in_order():
    network = InProcessNetwork(2, timeout_s=10, shapes={(0, 1): SLOW})
    sender, receiver = network.transport(0), network.transport(1)
    big, small = np.zeros(100_000, dtype=np.uint8), np.ones(10, dtype=np.uint8)
    start = time.monotonic()
    sender.send(1, "a", big)
    sender.send(1, "b", small)
    first = receiver.recv(0, "a")
    first_at = time.monotonic() - start
    second = receiver.recv(0, "b")
    second_at = time.monotonic() - start
    assert first.nbytes == big.nbytes and np.array_equal(second, small)
    # 20 ms on the wire + 20 ms latency; the small message queues behind the big one (FIFO per link)
    assert first_at >= 0.040 - 1e-3 and second_at >= first_at
    assert first_at < 2.0  # not lost, not stuck behind a timeout
    # the unshaped direction is instant
    receiver.send(0, "c", small)
    t = time.monotonic()
    sender.recv(1, "c")
    assert time.monotonic() - t < 0.02


def test_drained_at_says_when_the_last_message_arrives():
    network = InProcessNetwork(2, timeout_s=10, shapes={(0, 1): SLOW})
    sender = network.transport(0)
    sender.send(1, "a", np.zeros(50_000, dtype=np.uint8))  # 10 ms on the wire
    drained = network.drained_at((0, 1))
    assert drained >= time.monotonic() + 0.02  # latency still ahead
    assert network.drained_at((1, 0)) <= time.monotonic()  # nothing sent that way


def test_unknown_link_refused():
    with pytest.raises(ValueError, match="no such links"):
        InProcessNetwork(2, shapes={(0, 2): SLOW})


def test_closing_a_shaped_network_releases_a_waiting_receiver():
    network = InProcessNetwork(2, timeout_s=10, shapes={(0, 1): SLOW})
    errors = []

    def wait() -> None:
        try:
            network.transport(1).recv(0, "never")
        except Exception as exc:  # the test inspects the type
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    network.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and type(errors[0]).__name__ == "TransportClosed"


def _product(ctx, a, b):
    return a * b


def test_phases_split_offline_from_online_with_the_same_result_and_traffic():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 256)), rng.normal(size=(64, 256))
    overlapped = measure("2pc", "mul", _product, x, y, network=SLOW)
    phased = measure("2pc", "mul", _product, x, y, network=SLOW, phases=True)
    for m in (overlapped, phased):
        assert np.max(np.abs(m.output - x * y)) <= 1e-3  # fixed point at f = 16 on |x y| < 25
    assert overlapped.offline_seconds is None
    # the same protocol either way: bytes and rounds do not depend on when the dealer runs
    assert (phased.bytes, phased.dealer_bytes, phased.rounds) == (
        overlapped.bytes,
        overlapped.dealer_bytes,
        overlapped.rounds,
    )
    # the dealer's corrections (8 bytes per element) take their wire time plus the latency offline
    assert phased.offline_seconds >= SLOW.serialization_s(phased.dealer_bytes) + SLOW.latency_s - 1e-3
    # online: one round of openings, each party's 2 x 8 bytes per element on its own link
    assert phased.seconds >= SLOW.serialization_s(phased.bytes // 2) + SLOW.latency_s - 1e-3


def test_phases_need_a_dealer():
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match="no dealer"):
        measure("3pc", "mul", _product, x, x, phases=True)


def test_dealer_links_shaped_apart():
    links = link_shapes("2pc", SLOW, dealer_network=NO_SHAPING)
    assert links[(0, 1)] is SLOW and links[(1, 0)] is SLOW
    assert all(links[link] is NO_SHAPING for link in [(2, 0), (2, 1), (0, 2), (1, 2)])
    assert all(shape is SLOW for shape in link_shapes("3pc", SLOW, dealer_network=NO_SHAPING).values())
    assert len(link_shapes("2pc", SLOW)) == 6 and set(link_shapes("2pc", SLOW).values()) == {SLOW}
