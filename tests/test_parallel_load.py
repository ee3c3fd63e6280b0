"""A short run of benchmarks/load_parallel.py (issue 13): a real `glm-edge serve --parallel 4` (tiny bundle,
subprocess, loopback) under 64 concurrent streaming clients with random disconnects: no hang, every finished
answer equals its solo greedy reference, no failed request, RSS back within 5% of its start. The full run is
`python -m benchmarks.load_parallel` (2 minutes)."""

from __future__ import annotations

import json

import pytest

from benchmarks.load_parallel import load_test

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_64_streaming_clients_with_disconnects(tiny_bundle, tmp_path):
    report = load_test(tiny_bundle, clients=64, seconds=15, parallel=4, disconnect=0.25, warmup=5,
                       log_path=tmp_path / "serve.log")
    print("\nparallel load:", json.dumps({k: v for k, v in report.items() if k != "checks"}))
    assert report["mismatches"] == [] and report["errors"] == [] and report["timeouts"] == 0, report
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, (failed, report)
    assert report["finished"] >= 64 and report["disconnected"] >= 8, report
    assert report["tokens_per_step"] > 1.5, report  # several sequences decoded per step: batching happened
