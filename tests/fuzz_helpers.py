"""One schemathesis run against a served operation (shared by the chat-completions and dialect fuzz tests)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.server_helpers import MODEL


def fuzz_operation(server, path: str, method: str, mode: str, examples: int,
                   check_error: Callable[[object], None]) -> dict[int, int]:
    """Status counts of `examples` generated requests; fails on any 5xx, and calls `check_error(response)` on
    every 4xx. Positive cases keep the served model id most of the time, so they get past "unknown model"."""
    schema = schemathesis.openapi.from_url(server.base + "/openapi.json")
    strategy = schema[path][method].as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    rng = random.Random(0)
    seen, failures = {}, []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(case=strategy)
    def run(case):
        if isinstance(case.body, dict) and rng.random() < 0.85:
            case.body["model"] = MODEL
        response = case.call(base_url=server.base, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append((json.dumps(case.body, default=str)[:500], response.status_code, response.text[:300]))
        elif response.status_code >= 400:
            check_error(response)

    run()
    assert not failures, failures[:3]
    return seen
