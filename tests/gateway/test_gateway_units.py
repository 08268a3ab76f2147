"""Unit tests of the gateway's pure parts: stream token counting, least-outstanding choice, circuit breaker."""

from __future__ import annotations

import time

from gpumix.gateway.backends import Backend, BackendPool
from gpumix.gateway.config import HealthSettings, Limits
from gpumix.gateway.metrics import StreamUsage, usage_from_json
from gpumix.gateway.server import _multipart_field


def test_stream_usage_counts_events_across_chunk_boundaries() -> None:
    counter = StreamUsage()
    stream = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[{"delta":{"content":"b"}}]}\n\ndata: [DONE]\n\n'
    for i in range(0, len(stream), 7):  # split mid-line
        counter.feed(stream[i : i + 7])
    usage = counter.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.counted) == (0, 2, True)


def test_stream_usage_prefers_reported_usage() -> None:
    counter = StreamUsage()
    counter.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    counter.feed(b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3}}\n\ndata: [DONE]\n\n')
    usage = counter.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.counted) == (12, 3, False)


def test_usage_from_json_variants() -> None:
    assert usage_from_json({"usage": {"prompt_tokens": 4, "completion_tokens": 2}}).total_tokens == 6
    assert usage_from_json({"usage": {"total_tokens": 9}}).prompt_tokens == 9  # embeddings report only a total
    assert usage_from_json({"usage": None}) is None and usage_from_json([1]) is None


def _pool(n: int, health: HealthSettings | None = None) -> tuple[BackendPool, list[Backend]]:
    backends = [Backend("chat", f"http://b{i}", Limits(), health or HealthSettings()) for i in range(n)]
    return BackendPool({"chat": backends}), backends


def test_pick_least_outstanding_and_excluded() -> None:
    pool, (a, b, c) = _pool(3)
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert pool.pick("chat", set()) is b
    assert pool.pick("chat", {"http://b1"}) is c
    assert pool.pick("chat", {"http://b0", "http://b1", "http://b2"}) is None
    b.outstanding = c.outstanding = 0
    assert {pool.pick("chat", {"http://b0"}).url for _ in range(4)} == {"http://b1", "http://b2"}  # ties rotate


def test_circuit_opens_after_threshold_and_hard_failure() -> None:
    pool, (a, b) = _pool(2, HealthSettings(failure_threshold=2, cooldown_s=60))
    a.record_failure()
    assert pool.pick("chat", {"http://b1"}) is a  # one soft failure: still in
    a.record_failure()
    assert pool.pick("chat", {"http://b1"}) is None  # threshold reached: out for the cool-down
    b.record_failure(hard=True)  # connection refused opens at once
    assert not pool.any_available("chat")
    a.open_until = time.monotonic() - 1  # cool-down over and the health check passes again
    a.set_health(True)
    assert pool.pick("chat", set()) is a and a.open_until == 0.0


def test_health_check_failure_takes_backend_out() -> None:
    pool, (a,) = _pool(1)
    a.set_health(False)
    assert pool.pick("chat", set()) is None
    a.set_health(True)
    assert pool.pick("chat", set()) is a


def test_multipart_model_field() -> None:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        b'\x00\x01RIFF\r\n--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-small\r\n--XyZ--\r\n'
    )
    assert _multipart_field("multipart/form-data; boundary=XyZ", body, "model") == "whisper-small"
    assert _multipart_field("multipart/form-data; boundary=XyZ", body, "language") is None


def test_pick_weights_in_flight_requests_by_the_plans_replica_shares() -> None:
    """A replica planned for 2 of 16 streams gets 2 in flight while the other gets 14 (least outstanding would
    give each 8, and the small one would queue 6 behind its 2 slots)."""
    fast = Backend("chat", "http://fast", Limits(), HealthSettings(), weight=0.875)
    slow = Backend("chat", "http://slow", Limits(), HealthSettings(), weight=0.125)
    pool = BackendPool({"chat": [fast, slow]})
    for _ in range(16):
        pool.pick("chat", set()).outstanding += 1
    assert (fast.outstanding, slow.outstanding) == (14, 2)
    equal = _pool(2)[0]
    for _ in range(16):
        equal.pick("chat", set()).outstanding += 1
    assert [b.outstanding for b in equal.by_service["chat"]] == [8, 8]
