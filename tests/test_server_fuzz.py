"""Schema fuzzing (schemathesis, from our own OpenAPI document): no generated request gets a 5xx.

Bounded: a fixed number of examples per operation and mode, a small context (so the longest generation a
fuzzed max_tokens can ask for is short), on loopback. Positive cases keep the served model id most of the
time, so they reach the planner, the media policy and the runtime instead of stopping at "unknown model".
"""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
from tests.fuzz_helpers import fuzz_operation  # noqa: E402

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

EXAMPLES = {"positive": 60, "negative": 40}


def openai_error(response) -> None:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def _fuzz(fuzz_server, path, method, mode):
    return fuzz_operation(fuzz_server, path, method, mode, EXAMPLES[mode], openai_error)


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
