"""Schema fuzzing of /v1/responses and /v1/messages (schemathesis, from our own OpenAPI document): no 5xx, and
every 4xx in the dialect's own error shape.

Bounded like tests/test_server_fuzz.py: a fixed number of examples per route and mode, a small context (the
longest generation a fuzzed token limit can ask for is short), on loopback. Positive cases keep the served
model id most of the time, so they reach the mapping, the planner and the runtime.
"""

from __future__ import annotations

import json
import random

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from tests.server_helpers import MODEL  # noqa: E402

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

EXAMPLES = {"positive": 45, "negative": 30}


def openai_shape(body) -> bool:
    error = body.get("error")
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"} and bool(error["message"])


def anthropic_shape(body) -> bool:
    error = body.get("error")
    return (body.get("type") == "error" and isinstance(error, dict) and set(error) == {"type", "message"}
            and bool(error["message"]))


def fuzz(fuzz_server, path, mode, shape):
    schema = schemathesis.openapi.from_url(fuzz_server.base + "/openapi.json")
    strategy = schema[path]["POST"].as_strategy(generation_mode=schemathesis.GenerationMode(mode))
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
        elif response.status_code >= 400 and response.status_code != 405:
            assert shape(response.json()), response.text[:300]

    run()
    assert not failures, failures[:3]
    return seen


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("path,shape", [("/v1/responses", openai_shape), ("/v1/messages", anthropic_shape)],
                         ids=["responses", "messages"])
def test_dialects_never_5xx(fuzz_server, path, shape, mode):
    seen = fuzz(fuzz_server, path, mode, shape)
    print(f"\n{path} {mode}: status counts {seen}")
    assert sum(seen.values()) >= EXAMPLES[mode] // 2
    if mode == "positive":
        assert seen.get(200, 0) > 0, seen  # the fuzzer reached generation, not only validation
