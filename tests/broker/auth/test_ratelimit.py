"""Token bucket: bursts, refill, retry-after, per-key isolation, bounded memory."""

from __future__ import annotations

import math

import pytest

from broker.auth.ratelimit import RateDecision, TokenBucketLimiter


def limiter(rate=2.0, burst=5, **kw):
    return TokenBucketLimiter(rate, burst, clock=lambda: 0.0, **kw)


def test_burst_then_refused_with_exact_retry_after():
    lim = limiter()
    assert all(lim.check("t", now=0.0).allowed for _ in range(5))
    d = lim.check("t", now=0.0)
    assert not d.allowed and d.retry_after_s == pytest.approx(0.5)
    assert d.retry_after_header == "1"


def test_refill_over_time():
    lim = limiter()
    for _ in range(5):
        lim.check("t", now=0.0)
    assert not lim.check("t", now=0.4).allowed
    assert lim.check("t", now=0.5).allowed  # 0.4 s gave 0.8, +0.1 s -> 1.0 token


def test_refill_capped_at_burst():
    lim = limiter()
    lim.check("t", now=0.0)
    allowed = sum(lim.check("t", now=1000.0).allowed for _ in range(10))
    assert allowed == 5


def test_keys_are_isolated():
    lim = limiter(burst=1)
    assert lim.check("a", now=0.0).allowed
    assert not lim.check("a", now=0.0).allowed
    assert lim.check("b", now=0.0).allowed


def test_a_key_may_carry_its_own_rate_and_burst():
    lim = limiter()  # 2/s, burst 5 by default
    assert sum(lim.check("svc", now=0.0, rate=10.0, burst=2).allowed for _ in range(5)) == 2
    d = lim.check("svc", now=0.0, rate=10.0, burst=2)
    assert not d.allowed and d.retry_after_s == pytest.approx(0.1)
    assert lim.check("svc", now=0.1, rate=10.0, burst=2).allowed
    assert sum(lim.check("other", now=0.0).allowed for _ in range(10)) == 5  # the limiter's own


@pytest.mark.parametrize("seconds", [0.0, 0.7, 3.0, 10.0])
def test_invariant_burst_plus_rate_times_window(seconds):
    lim = limiter(rate=2.0, burst=5)
    allowed = 0
    steps = 100
    for i in range(steps + 1):
        t = seconds * i / steps
        while lim.check("t", now=t).allowed:
            allowed += 1
    assert allowed == math.floor(5 + 2.0 * seconds + 1e-9)


def test_cost_larger_than_burst_never_allowed():
    d = limiter(burst=2).check("t", cost=3, now=0.0)
    assert not d.allowed and d.retry_after_s == math.inf


def test_memory_bounded_lru():
    lim = limiter(burst=1, max_keys=3)
    for k in "abcd":
        lim.check(k, now=0.0)
    assert len(lim) == 3
    assert lim.check("a", now=0.0).allowed  # "a" was evicted: it comes back full


def test_clock_is_used_when_no_now():
    t = [0.0]
    lim = TokenBucketLimiter(1.0, 1, clock=lambda: t[0])
    assert lim.check("k").allowed and not lim.check("k").allowed
    t[0] = 1.0
    assert lim.check("k").allowed


@pytest.mark.parametrize("rate, burst", [(0, 1), (1, 0), (-1, 5)])
def test_bad_config(rate, burst):
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate, burst)


def test_retry_after_header_minimum_one():
    assert RateDecision(False, retry_after_s=0.01).retry_after_header == "1"
    assert RateDecision(False, retry_after_s=2.2).retry_after_header == "3"


def _app_with_limit(rate=1.0, burst=2, clock=lambda: 0.0):
    from fastapi import FastAPI

    from broker.auth.ratelimit import RateLimitMiddleware

    app = FastAPI()

    @app.get("/x")
    def x():
        return {"ok": True}

    @app.get("/healthz")
    def h():
        return {"ok": True}

    app.add_middleware(RateLimitMiddleware, limiter=TokenBucketLimiter(rate, burst, clock=clock))
    return app


def test_middleware_429_with_retry_after_per_token():
    from fastapi.testclient import TestClient

    with TestClient(_app_with_limit()) as c:
        a = {"Authorization": "Bearer aaa"}
        assert [c.get("/x", headers=a).status_code for _ in range(3)] == [200, 200, 429]
        r = c.get("/x", headers=a)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "RATE_LIMITED"
        assert c.get("/x", headers={"Authorization": "Bearer bbb"}).status_code == 200  # other token
        assert all(c.get("/healthz", headers=a).status_code == 200 for _ in range(5))  # probes exempt


def test_middleware_refills_with_clock():
    from fastapi.testclient import TestClient

    t = [0.0]
    with TestClient(_app_with_limit(rate=1.0, burst=1, clock=lambda: t[0])) as c:
        assert c.get("/x").status_code == 200
        assert c.get("/x").status_code == 429
        t[0] = 1.0
        assert c.get("/x").status_code == 200


# ------------------------------------------------------------------ shared buckets (entry workers)
def shared(slots=64):
    import multiprocessing

    from broker.auth.ratelimit import SharedTokenBuckets

    return SharedTokenBuckets.create(multiprocessing.get_context("spawn"), slots)


SHARED = [  # (name, checks as (key, now), rate, burst, allowed flags)
    ("burst then refused", [("k", 0.0)] * 4, 1.0, 3, [True, True, True, False]),
    ("refill", [("k", 0.0)] * 2 + [("k", 0.5), ("k", 1.0)], 1.0, 2, [True, True, False, True]),
    ("keys are isolated", [("a", 0.0), ("a", 0.0), ("b", 0.0)], 0.1, 1, [True, False, True]),
    ("tuple keys", [(("svc", "token:1"), 0.0), (("svc", "token:1"), 0.0), (("svc", "token:2"), 0.0)], 0.1, 1,
     [True, False, True]),
    ("refill capped at burst", [("k", 0.0)] + [("k", 1000.0)] * 3, 1.0, 2, [True, True, True, False]),
]


@pytest.mark.parametrize("name,checks,rate,burst,want", SHARED, ids=[c[0] for c in SHARED])
def test_shared_buckets_behave_as_the_limiter(name, checks, rate, burst, want):
    b = shared()
    assert [b.check(k, now=t, rate=rate, burst=burst).allowed for k, t in checks] == want
    ref = TokenBucketLimiter(rate, burst)
    assert [ref.check(k, now=t).allowed for k, t in checks] == want


def test_shared_buckets_give_retry_after_and_refuse_a_cost_above_burst():
    b = shared()
    b.check("k", now=0.0, rate=2.0, burst=1)
    d = b.check("k", now=0.0, rate=2.0, burst=1)
    assert not d.allowed and d.retry_after_s == pytest.approx(0.5)
    assert b.check("k", cost=5, now=0.0, rate=2.0, burst=1).retry_after_s == math.inf
    with pytest.raises(ValueError):
        b.check("k", now=0.0)  # a shared bucket has no default rate


def test_a_full_table_gives_up_the_fullest_bucket_and_errs_on_allowing():
    b = shared(slots=8)  # fewer slots than keys: every key probes the whole table
    for i in range(8):
        assert b.check(f"k{i}", now=0.0, rate=1.0, burst=1).allowed
    # k0..k7 hold empty buckets; at t=10 all are full again: a new key takes one slot
    assert b.check("new", now=10.0, rate=1.0, burst=1).allowed
    assert not b.check("new", now=10.0, rate=1.0, burst=1).allowed
    # over any window a key never gets more than burst + rate * T while it keeps its slot
    allowed = sum(b.check("hot", now=20.0 + i * 0.01, rate=1.0, burst=3).allowed for i in range(100))
    assert allowed <= 3 + 1.0 * 1.0


def test_shared_buckets_are_one_table_for_every_process():
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    b = shared()
    assert sum(b.check("caller", now=0.0, rate=0.001, burst=10).allowed for _ in range(6)) == 6
    q = ctx.Queue()
    p = ctx.Process(target=_take, args=(b, q))
    p.start()
    got = q.get(timeout=60)
    p.join(30)
    assert got == 4  # 10 in all, 6 taken here


def _take(b, q) -> None:
    q.put(sum(b.check("caller", now=0.0, rate=0.001, burst=10).allowed for _ in range(10)))
