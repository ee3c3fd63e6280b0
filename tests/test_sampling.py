"""Sampling defaults and penalties equal to transformers `generate` (tiny checkpoint, F32, greedy).

Defaults come from the checkpoint's generation_config.json, else transformers' GenerationConfig defaults;
`repetition_penalty` covers the prompt (image placeholders included) as transformers does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from edge.engine.sampling import CHECKPOINT, TRANSFORMERS, SamplingParams, sampling_defaults
from edge.runtime import Runtime
from tests.conftest import png_bytes
from tests.hf_reference import hf_greedy

N = 24
REPEATS = [{"role": "user", "content": "Hello!"}]  # its greedy answer repeats a token
ECHOES = [{"role": "user", "content": "What is the capital of France?"}]  # its greedy answer reuses a prompt token


def test_defaults_and_their_sources():
    params, sources = sampling_defaults({"temperature": 0.8, "top_k": 2, "do_sample": True})
    assert (params.temperature, params.top_k, params.top_p, params.repetition_penalty) == (0.8, 2, 1.0, 1.0)
    assert sources["temperature"] == CHECKPOINT and sources["top_p"] == TRANSFORMERS
    assert not params.greedy
    silent, _ = sampling_defaults({})
    assert silent.greedy and silent.repetition_penalty == 1.0 and silent.top_k == 50  # transformers' defaults


def test_request_temperature_switches_sampling():
    greedy = SamplingParams()
    assert greedy.greedy and not greedy.with_overrides(temperature=0.7).greedy
    sampled = SamplingParams(do_sample=True, temperature=0.8)
    assert sampled.with_overrides(temperature=0.0).greedy and not sampled.with_overrides(top_k=5).greedy


@pytest.fixture(scope="module")
def bundle_with(tiny_bundle, tmp_path_factory):
    """bundle_with(generation) -> a copy of the tiny bundle whose manifest carries that generation config."""

    def make(generation: dict):
        out = tmp_path_factory.mktemp("generation") / "bundle"
        shutil.copytree(tiny_bundle, out, copy_function=os.link)
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["generation"] = generation
        (out / "manifest.json").unlink()  # a hard link: never write through to the shared bundle
        (out / "manifest.json").write_text(json.dumps(manifest))
        return out

    return make


def load(path):
    return Runtime.load(path, device="cpu", vision_dtype="fp32", kv_type="f32", flash_attn="off", ctx_size=1024,
                        threads=2)


def test_silent_generation_config_is_pure_argmax(bundle_with, hf_model, hf_tokenizer):
    """(a) No sampling keys: temperature 0 (or nothing) is transformers' greedy, no penalty at all."""
    with load(bundle_with({"eos_token_id": [0]})) as rt:
        ours = rt.chat(REPEATS, temperature=0.0, max_tokens=N).token_ids
        assert rt.chat(REPEATS, max_tokens=N).token_ids == ours  # do_sample defaults to false
    want = hf_greedy(hf_model, hf_tokenizer, REPEATS, [], max_new_tokens=N)
    assert len(set(want)) < len(want), "the case must repeat a token to tell a penalty apart"
    assert ours == want


def test_checkpoint_repetition_penalty_covers_the_prompt(bundle_with, hf_model, hf_tokenizer):
    """(b) generation_config sets repetition_penalty: it applies to the prompt's ids too, images included."""
    plain = hf_greedy(hf_model, hf_tokenizer, ECHOES, [], max_new_tokens=N)
    prompt_ids = set(hf_tokenizer.apply_chat_template(ECHOES, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert prompt_ids & set(plain), "the case must generate a prompt token when unpenalised"
    image = png_bytes(84, 56, seed=11)
    with_image = [{"role": "user", "content": [{"type": "image", "image": image},
                                               {"type": "text", "text": ECHOES[0]["content"]}]}]
    hf_with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ECHOES[0]["content"]}]}]
    with load(bundle_with({"do_sample": True, "temperature": 0.6, "repetition_penalty": 1.1})) as rt:
        ours = rt.chat(ECHOES, temperature=0.0, max_tokens=N).token_ids
        ours_image = rt.chat(with_image, temperature=0.0, max_tokens=N).token_ids
        prepared = [rt.prepare(rt.prompt.build(with_image)[1][0])]
    want = hf_greedy(hf_model, hf_tokenizer, ECHOES, [], max_new_tokens=N, repetition_penalty=1.1)
    assert want != plain and ours == want
    assert ours_image == hf_greedy(hf_model, hf_tokenizer, hf_with_image, prepared, max_new_tokens=N,
                                   repetition_penalty=1.1)


def test_request_value_overrides_both(bundle_with, hf_model, hf_tokenizer):
    """(c) An explicit request value wins over the checkpoint and transformers' default."""
    with load(bundle_with({"repetition_penalty": 1.1})) as rt:
        off = rt.chat(ECHOES, temperature=0.0, repetition_penalty=1.0, max_tokens=N).token_ids
        strong = rt.chat(REPEATS, temperature=0.0, repetition_penalty=1.3, max_tokens=N).token_ids
    assert off == hf_greedy(hf_model, hf_tokenizer, ECHOES, [], max_new_tokens=N)
    assert strong == hf_greedy(hf_model, hf_tokenizer, REPEATS, [], max_new_tokens=N, repetition_penalty=1.3)


def test_info_shows_defaults_and_sources(bundle_with):
    path = bundle_with({"temperature": 0.6})
    out = subprocess.run([sys.executable, "-m", "edge.cli", "info", str(path), "--json"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    defaults = json.loads(out)["sampling_defaults"]
    assert defaults["temperature"] == {"value": 0.6, "source": CHECKPOINT}
    assert defaults["repetition_penalty"] == {"value": 1.0, "source": TRANSFORMERS}
