"""Schema fuzzing of /v1/responses and /v1/messages (schemathesis, from our own OpenAPI document): no 5xx, and
every 4xx in the dialect's own error shape.

Bounded like tests/test_server_fuzz.py: a fixed number of examples per route and mode, a small context (the
longest generation a fuzzed token limit can ask for is short), on loopback. Positive cases keep the served
model id most of the time, so they reach the mapping, the planner and the runtime.
"""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
from tests.fuzz_helpers import fuzz_operation  # noqa: E402

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
    def check(response):
        if response.status_code != 405:  # routing answers 405 before any dialect
            assert shape(response.json()), response.text[:300]

    return fuzz_operation(fuzz_server, path, "POST", mode, EXAMPLES[mode], check)


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("path,shape", [("/v1/responses", openai_shape), ("/v1/messages", anthropic_shape)],
                         ids=["responses", "messages"])
def test_dialects_never_5xx(fuzz_server, path, shape, mode):
    seen = fuzz(fuzz_server, path, mode, shape)
    print(f"\n{path} {mode}: status counts {seen}")
    assert sum(seen.values()) >= EXAMPLES[mode] // 2
    if mode == "positive":
        assert seen.get(200, 0) > 0, seen  # the fuzzer reached generation, not only validation
