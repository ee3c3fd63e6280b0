"""Schema fuzzing (schemathesis, from our own OpenAPI document): no generated request gets a 5xx.

Bounded: a fixed number of examples per operation and mode, a small context (so the longest generation a
fuzzed max_tokens can ask for is short), on loopback. Positive cases keep the served model id most of the
time, so they reach the planner, the media policy and the runtime instead of stopping at "unknown model".
"""

from __future__ import annotations

import json
import random

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from tests.server_helpers import MODEL  # noqa: E402

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

EXAMPLES = {"positive": 60, "negative": 40}


def _fuzz(fuzz_server, path, method, mode):
    schema = schemathesis.openapi.from_url(fuzz_server.base + "/openapi.json")
    operation = schema[path][method]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    rng = random.Random(0)
    seen, failures = {}, []

    @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(case=strategy)
    def run(case):
        if isinstance(case.body, dict) and rng.random() < 0.85:
            case.body["model"] = MODEL
        response = case.call(base_url=fuzz_server.base, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append((json.dumps(case.body, default=str)[:500], response.status_code, response.text[:300]))
        elif response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]

    run()
    assert not failures, failures[:3]
    return seen


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_chat_completions_never_5xx(fuzz_server, mode):
    seen = _fuzz(fuzz_server, "/v1/chat/completions", "POST", mode)
    print(f"\n{mode}: status counts {seen}")
    assert sum(seen.values()) >= EXAMPLES[mode] // 2
    if mode == "positive":
        assert seen.get(200, 0) > 0, seen  # the fuzzer reached generation, not only validation


def test_get_endpoints_never_5xx(fuzz_server):
    for path in ("/v1/models", "/health", "/metrics"):
        _fuzz(fuzz_server, path, "GET", "positive")
