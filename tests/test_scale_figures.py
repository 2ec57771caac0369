"""benchmarks.scale's figures: which process is which, its peak memory and CPU time, and the table of a failed size."""

from __future__ import annotations

import os

from benchmarks.process_memory import cpu_seconds, peak_rss_bytes, role_of
from benchmarks.scale import _table


def test_simulation_processes_are_told_apart_by_their_command_lines():
    assert role_of(["/venv/bin/python3", "/venv/bin/flwr-simulation", "--runtime-api-address", "x"]) == "server"
    assert role_of(["ray::ClientAppActor.run"]) == "client"
    assert role_of(["/venv/bin/python3", "/venv/bin/flower-superlink", "--insecure"]) == "other"
    assert role_of([]) == "other"


def test_peak_memory_and_cpu_time_are_read_for_a_live_process_and_zero_for_none():
    # Prepare: some CPU work in this process
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))

    # Execute / Assert
    assert cpu_seconds(os.getpid()) > before
    assert peak_rss_bytes(os.getpid()) > 1024 * 1024
    assert (peak_rss_bytes(2**22 + 1), cpu_seconds(2**22 + 1)) == (0, 0.0)


def test_a_size_that_failed_is_a_table_row_that_says_why():
    # Prepare
    row = {
        "nodes": 10000,
        "sampled_per_round": 50,
        "failed": "flwr run exceeded --timeout 60 s and was stopped",
        "round_1_seconds": None,
        "round_1_over_smallest": None,
        "round_1_align_seconds": None,
        "later_round_median_seconds": None,
        "nodes_warmed_up": [],
        "server_app_peak_rss_mib": 900.0,
        "client_actor_peak_rss_mib": 0.0,
        "server_app_cpu_seconds": 60.0,
        "client_actor_cpu_seconds": 0.0,
        "cpu_over_smallest": None,
        "client_store_disk_mib": 0.0,
        "load_1min_before": 2.0,
        "load_1min_after": 3.0,
    }

    # Execute
    table = _table([row])

    # Assert
    assert "| 10000 | 50 | - failed: flwr run exceeded --timeout 60 s" in table
    assert "| 60 + 0 |" in table
