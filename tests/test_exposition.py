"""`squall/exposition.py`: the Prometheus text and the JSON status from a hand-made snapshot.

Pure functions: no process, no socket, no /proc; the figures in are the figures out.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from squall.exposition import (
    ProcessFigures,
    Snapshot,
    chart_point,
    metrics_text,
    status,
)
from squall.slot_table import BUCKET, FIELDS, IN_FLIGHT, REQUESTS, STATUS


def counters(requests: int, in_flight: int = 0, fast: int = 0) -> list[int]:
    fields = [0] * FIELDS
    fields[STATUS + 2] = fields[REQUESTS] = requests  # all 2xx
    fields[IN_FLIGHT] = in_flight
    fields[BUCKET] = fast  # in (0, 1 ms]
    return fields


def snapshot() -> Snapshot:
    return Snapshot(
        state={
            "pid": 10,
            "started_at": 1000.0,
            "workers_wanted": 2,
            "stopping": False,
            "restart_causes": {"signal": 1},
            "workers": [
                {
                    "task_id": 0,
                    "pid": 11,
                    "state": "ready",
                    "started_at": 1010.0,
                    "heartbeat_age": 0.5,
                },
                {
                    "task_id": 1,
                    "pid": 12,
                    "state": "booting",
                    "started_at": 1020.0,
                    "heartbeat_age": None,
                },
            ],
        },
        totals=counters(7, in_flight=-1),  # a gauge read mid-update shows as 0
        counters={11: counters(5, in_flight=1), 12: counters(0)},
        worker_rss={11: 4096, 12: None},
        requests_by_task={0: 5, 1: 2},
        listen_queues=[({"listener": "127.0.0.1:80", "socket": "0"}, (3, 128))],
        process=ProcessFigures(
            pid=10, cpu_seconds=1.5, memory=(8192, 4096), start_time=999.0, open_fds=9, max_fds=64
        ),
        now=1030.0,
    )


def test_the_text_shows_the_snapshot() -> None:
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics_text(snapshot()).decode())
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("squall_requests_total", status_class="2xx") == 7
    assert value("squall_requests_in_flight") == 0
    assert value("squall_worker_requests_total", worker="1") == 2
    assert value("squall_listen_queue_length", listener="127.0.0.1:80", socket="0") == 3
    assert value("squall_worker_rss_bytes", worker="0", pid="11") == 4096
    assert value("squall_worker_rss_bytes", worker="1", pid="12") is None  # unknown: no sample
    assert value("squall_worker_heartbeat_age_seconds", worker="0", pid="11") == 0.5
    assert value("squall_workers", state="booting") == 1
    assert value("squall_worker_restarts_total", cause="signal") == 1
    assert value("process_open_fds") == 9


def test_the_status_shows_the_snapshot() -> None:
    shown = status(snapshot())
    assert shown["ready"] is True
    assert shown["supervisor"] == {
        "pid": 10,
        "started_at": 1000.0,
        "rss_bytes": 4096,
        "cpu_seconds": 1.5,
    }
    first, second = shown["workers"]
    assert (first["uptime"], first["requests"], first["in_flight"], first["rss_bytes"]) == (
        20.0,
        5,
        1,
        4096,
    )
    assert (second["uptime"], second["requests"], second["rss_bytes"]) == (10.0, 0, None)
    assert shown["totals"]["requests"] == 7 and shown["totals"]["in_flight"] == 0


def test_a_chart_point_is_the_rate_and_latency_between_two_readings() -> None:
    before, after = counters(10, fast=10), counters(30, fast=30)
    assert chart_point(before, after, 2.0, 5.0) == (5.0, 10.0, 0.5, 0.99)
    assert chart_point(after, after, 0.0, 6.0) == (6.0, 0.0, None, None)
