"""The memory plan in front of loading: `--ctx-size auto` / `--kv-type auto` resolved by the plan, a context
that cannot fit refused before anything loads, and `glm-edge doctor BUNDLE` printing the plan table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.errors import MemoryPlanError
from edge.options import KvType
from edge.runtime import Runtime


def test_auto_context_and_kv_type_are_resolved_from_the_plan(tiny_bundle):
    with Runtime.load(tiny_bundle, device="cpu", ctx_size=0, kv_type="auto", threads=1, parallel=1) as rt:
        assert rt.options.ctx_size >= 2048 and rt.options.kv_type in (KvType.F16, KvType.Q8_0)
        assert rt.decoder.n_ctx == rt.options.ctx_size
        assert rt.chat([{"role": "user", "content": "Hi"}], temperature=0.0, max_tokens=3).usage.prompt_tokens > 0


def test_a_context_that_cannot_fit_is_refused_before_loading(tiny_bundle):
    with pytest.raises(MemoryPlanError, match="context length"):
        Runtime.load(tiny_bundle, device="cpu", ctx_size=10_000_000, threads=1, parallel=1, memory_check=True)


def test_doctor_prints_the_plan_table(tiny_bundle):
    out = subprocess.run([sys.executable, "-m", "edge.cli", "doctor", str(tiny_bundle)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "131072" in out.stdout or "128K" in out.stdout
