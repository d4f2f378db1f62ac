"""`python -m broker.bench.entry_point`: a tiny run gives CPU and wall figures per request."""

from broker.bench.entry_point import bench


def test_a_small_run_reports_a_cost_per_request_for_each_block():
    out = bench(requests=50)
    assert out["requests"] == 50 and len(out["cpu_us"]) == len(out["wall_us"]) == 5
    assert all(x > 0 for x in out["cpu_us"] + out["wall_us"])
