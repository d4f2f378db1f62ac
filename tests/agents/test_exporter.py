"""The /metrics scrape parsed with prometheus_client's own text parser."""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.exporter import DcgmExporter
from agents.fake import FakeReader
from agents.schema import XidEvent
from tests.agents.builders import device, gpm, proc

DCGM_NAMES = {
    "DCGM_FI_DEV_GPU_UTIL": "gauge", "DCGM_FI_DEV_MEM_COPY_UTIL": "gauge", "DCGM_FI_DEV_FB_USED": "gauge",
    "DCGM_FI_DEV_FB_FREE": "gauge", "DCGM_FI_DEV_POWER_USAGE": "gauge",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "counter", "DCGM_FI_DEV_GPU_TEMP": "gauge",
    "DCGM_FI_DEV_MEMORY_TEMP": "gauge", "DCGM_FI_DEV_SM_CLOCK": "gauge", "DCGM_FI_DEV_MEM_CLOCK": "gauge",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "counter", "DCGM_FI_DEV_XID_ERRORS": "gauge",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "gauge", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "gauge",
    "DCGM_FI_PROF_DRAM_ACTIVE": "gauge",
}


def scrape(exp: DcgmExporter) -> dict[str, tuple[str, list]]:
    text = exp.render().decode()
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def value(fams, name, gpu):
    [s] = [s for s in fams[name][1] if s.labels["gpu"] == str(gpu)]
    return s.value, s.labels


def test_dcgm_names_types_and_labels():
    r = FakeReader(2)
    r.init()
    exp = DcgmExporter("node-7", "550.54.15")
    exp.update(r.read(1.0))
    fams = scrape(exp)
    text = exp.render().decode()
    for name, typ in DCGM_NAMES.items():
        assert fams[name][0] == typ, name
        assert len(fams[name][1]) == 2, name
        assert f"# TYPE {name} {typ}\n" in text and f"\n{name}{{gpu=" in text  # bare dcgm name, no "_total"
    assert "_total" not in text
    _, labels = value(fams, "DCGM_FI_DEV_GPU_UTIL", 1)
    assert {k: labels[k] for k in ("gpu", "UUID", "modelName", "Hostname", "device", "job", "project")} == {
        "gpu": "1", "UUID": r.uuids[1], "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node-7",
        "device": "nvidia1", "job": "", "project": "",
    }
    assert labels["DCGM_FI_DRIVER_VERSION"] == "550.54.15"


@pytest.mark.parametrize(
    "name,sample_kw,metric,expected",
    [
        ("fb free is total minus used", dict(memory_total_mb=1000.0, memory_used_mb=250.0), "DCGM_FI_DEV_FB_FREE", 750.0),
        ("power in watts", dict(power_w=312.5), "DCGM_FI_DEV_POWER_USAGE", 312.5),
        ("energy counter in mJ", dict(energy_mj=123456789), "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 123456789.0),
        ("tensor activity as ratio", dict(gpm=gpm(80.0, 40.0, 20.0)), "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 0.4),
        ("dram activity as ratio", dict(gpm=gpm(80.0, 40.0, 20.0)), "DCGM_FI_PROF_DRAM_ACTIVE", 0.2),
        ("last xid", dict(xid_events=[XidEvent(xid=13, ts=0), XidEvent(xid=79, ts=0)]), "DCGM_FI_DEV_XID_ERRORS", 79.0),
    ],
)
def test_values(name, sample_kw, metric, expected):
    exp = DcgmExporter("h")
    exp.update([device(0, **sample_kw)])
    assert value(scrape(exp), metric, 0)[0] == pytest.approx(expected)


def test_unsupported_field_not_exported_for_that_gpu():
    exp = DcgmExporter("h")
    exp.update([device(0, power_w=None), device(1, power_w=100.0)])
    fams = scrape(exp)
    assert [s.labels["gpu"] for s in fams["DCGM_FI_DEV_POWER_USAGE"][1]] == ["1"]
    assert fams["DCGM_FI_PROF_GR_ENGINE_ACTIVE"][1] == []  # no GPM on either


def test_job_and_project_labels_follow_attribution():
    exp = DcgmExporter("h")
    exp.update([device(0, processes=[proc(1, "job-b", "p2"), proc(2, "job-a", "p1"), proc(3)]), device(1)])
    fams = scrape(exp)
    assert value(fams, "DCGM_FI_DEV_FB_USED", 0)[1]["job"] == "job-a,job-b"
    assert value(fams, "DCGM_FI_DEV_FB_USED", 0)[1]["project"] == "p1,p2"
    exp.update([device(0)])  # the job ended: its label set goes away
    assert value(scrape(exp), "DCGM_FI_DEV_FB_USED", 0)[1]["job"] == ""


def test_xid_gauge_keeps_last_value_after_event():
    exp = DcgmExporter("h")
    exp.update([device(0, xid_events=[XidEvent(xid=48, ts=0)])])
    exp.update([device(0)])
    assert value(scrape(exp), "DCGM_FI_DEV_XID_ERRORS", 0)[0] == 48.0


def test_http_metrics_endpoint():
    exp = DcgmExporter("h")
    exp.update([device(0, util_gpu=42.0)])
    server = exp.serve(0, "127.0.0.1")
    try:
        port = server.server_address[1]
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert 'DCGM_FI_DEV_GPU_UTIL{gpu="0"' in r.text
        assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=5).status_code == 404
    finally:
        server.shutdown()
        server.server_close()
