"""The memory plan (edge/memory_plan.py): dims from the GGUF, `auto` context and KV type, refusal of a context
that cannot fit; and the plan against the measured RSS of a loaded bundle at real widths (2 decoder layers,
2 ViT blocks, real vocabulary) within 10%."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import MemoryPlanError
from edge.memory_plan import (CONTEXT_STEP, GIB, KV_PAD, ORT_SESSION_BYTES, choose_context, decoder_dims, format_plan_table,
                              plan_memory, usable)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    return tiny_bundle, json.loads((tiny_bundle / "manifest.json").read_text())


def test_dims_and_kv_bytes_come_from_the_gguf(tiny, tiny_checkpoint):
    bundle, manifest = tiny
    config = json.loads((tiny_checkpoint / "config.json").read_text())["text_config"]
    dims = decoder_dims(bundle / manifest["decoder"]["path"])
    assert (dims.n_layer, dims.n_head, dims.n_head_kv, dims.key_length) == (
        config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"])
    assert dims.n_vocab == config["vocab_size"] and dims.n_ctx_train == config["max_position_embeddings"]
    per_token = config["num_hidden_layers"] * config["num_key_value_heads"] * 2 * config["head_dim"]
    assert dims.kv_bytes_per_token("f16") == per_token * 2
    assert dims.kv_bytes_per_token("f32") == per_token * 4
    assert dims.kv_bytes_per_token("q8_0") == per_token * 34 / 32
    assert dims.weight_bytes < manifest["decoder"]["bytes"] < dims.weight_bytes + (8 << 20)  # + metadata, vocab
    plan = plan_memory(bundle, 1000, "f16")
    assert plan.parts["kv_cache"] == KV_PAD * 4 * per_token * 2  # 1000 cells padded to 1024
    assert plan.parts["vision_weights"] == sum(f["bytes"] for f in manifest["vision"]["fp32"]["files"]) + ORT_SESSION_BYTES
    assert plan_memory(bundle, 1000, "f16", vision_dtype="int8").parts["vision_weights"] < plan.parts["vision_weights"]


def test_auto_picks_the_largest_context_that_fits(tiny):
    bundle, _ = tiny
    base = plan_memory(bundle, 0, "f16").total
    dims = decoder_dims(bundle / tiny[1]["decoder"]["path"])
    per_1k = plan_memory(bundle, CONTEXT_STEP, "f16").total - base
    ram = int((base + 20 * per_1k + 600 * 2**20) / 0.9)  # room for about 20K tokens after the margin
    ctx, kv, plan = choose_context(bundle, "auto", "f16", ram=ram)
    assert kv == "f16" and 2048 <= ctx < dims.n_ctx_train and ctx % CONTEXT_STEP == 0
    assert plan.total <= usable(ram) < plan_memory(bundle, ctx + CONTEXT_STEP, "f16").total
    ctx8, kv8, _ = choose_context(bundle, "auto", "auto", ram=ram)
    assert kv8 == "q8_0" and ctx8 > ctx  # auto KV type: q8_0 reaches further than f16 here
    big = 64 * GIB
    assert choose_context(bundle, "auto", "auto", ram=big)[:2] == (dims.n_ctx_train, "f16")  # f16 when both reach the end


def test_a_context_that_cannot_fit_is_refused_with_what_would(tiny):
    bundle, _ = tiny
    ram = int(plan_memory(bundle, 16384, "f16").total / 0.9) + (600 << 20)
    with pytest.raises(MemoryPlanError) as err:
        choose_context(bundle, 131072, "f16", ram=ram)
    msg = str(err.value)
    assert "--ctx-size 131072 does not fit" in msg and "GiB" in msg and "kv cache" in msg
    fits = [int(w) for w in msg.split("what fits: ")[1].replace("--ctx-size ", "").split() if w.isdigit()]
    assert fits and all(16384 <= n < 131072 for n in fits)
    assert choose_context(bundle, fits[0], "f16", ram=ram)[0] == fits[0]  # what it offers does fit
    assert err.value.http_status == 400
    q8 = plan_memory(bundle, 24576, "q8_0").total
    assert plan_memory(bundle, 24576, "f16").total > q8
    ram = q8 + (512 << 20)  # usable: exactly the q8_0 plan (the 512 MiB minimum margin applies)
    assert choose_context(bundle, 24576, "auto", ram=ram)[:2] == (24576, "q8_0")  # auto type: q8_0 makes it fit
    with pytest.raises(MemoryPlanError):
        choose_context(bundle, 24576, "f16", ram=ram)
    with pytest.raises(MemoryPlanError, match="over the model's context length"):
        choose_context(bundle, 10**7, "f16", ram=64 * GIB)


def test_gpu_offload_and_flash_attention(tiny):
    bundle, _ = tiny
    gpu = plan_memory(bundle, 8192, "f16", offload=True)
    assert gpu.vram == sum(gpu.parts[k] for k in ("decoder_weights", "kv_cache", "decoder_compute"))
    assert gpu.ram + gpu.vram == gpu.total
    vram = gpu.vram + (512 << 20)  # usable GPU memory: exactly the 8K plan's GPU parts
    ctx, kv, plan = choose_context(bundle, "auto", "f16", ram=64 * GIB, vram=vram, offload=True)
    assert ctx == 8192 and plan.vram <= usable(vram)  # the GPU, not the 64 GiB of RAM, limits the context
    with pytest.raises(MemoryPlanError, match="needs flash attention"):
        choose_context(bundle, 8192, "q8_0", ram=64 * GIB, flash_attn=False)
    assert choose_context(bundle, 8192, "auto", ram=64 * GIB, flash_attn=False)[1] == "f16"
    no_fa = plan_memory(bundle, 131072, "f16", flash_attn=False).parts["decoder_compute"]
    assert no_fa > 8 * plan_memory(bundle, 131072, "f16").parts["decoder_compute"]  # the score matrices


def test_plan_table_for_doctor(tiny):
    bundle, _ = tiny
    text = format_plan_table(bundle, ram=64 * GIB)
    lines = text.splitlines()
    assert lines[0].startswith("context | kv | decoder weights | kv cache")
    assert [line.split(" | ")[:2] for line in lines[2:8]] == [
        ["8K", "f16"], ["8K", "q8_0"], ["32K", "f16"], ["32K", "q8_0"], ["128K", "f16"], ["128K", "q8_0"]]
    assert all(line.endswith("yes") for line in lines[2:8])


MEASURE = """
import json, sys
from edge.runtime import Runtime
from tests.conftest import png_bytes

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")}

rt = Runtime.load(sys.argv[1], device="cpu", ctx_size=int(sys.argv[2]), kv_type="f16", vision_dtype="fp32", parallel=1,
                  projector="numpy", threads=2)
rt.chat([{"role": "user", "content": " ".join(f"word{i}" for i in range(600))}], max_tokens=2, temperature=0.0)
done = rt.chat([{"role": "user", "content": [{"type": "image", "image": png_bytes(448, 448)},
                                              {"type": "text", "text": "What is this?"}]}], max_tokens=2, temperature=0.0)
print(json.dumps({**rss(), "image_tokens": done.usage.image_tokens}))
"""


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory):
    """Real widths and vocabulary (151552 x 4096 tables), 2 decoder layers, 2 ViT blocks; Q8_0 decoder."""
    from convert.bundle_writer import convert_checkpoint
    from convert.reference import write_reference

    root = tmp_path_factory.mktemp("wide")
    ckpt = write_reference(root / "ckpt", size="wide", text_layers=2, vision_depth=2)
    bundle = convert_checkpoint(ckpt, root / "bundle", quant="Q8_0", vision_dtypes=("fp32",), projector_quant="F16")
    shutil.rmtree(ckpt)
    return bundle


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_plan_matches_measured_rss_at_real_widths(wide_bundle):
    ctx = 16384
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(wide_bundle), str(ctx)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    plan = plan_memory(wide_bundle, ctx, "f16", vision_dtype="fp32", projector="numpy",
                       max_image_tokens=measured["image_tokens"])
    assert measured["image_tokens"] == 256
    assert abs(plan.total - measured["VmRSS"]) <= 0.10 * measured["VmRSS"], (plan.describe(), measured)
    # the mapped decoder is the file-backed part of RSS; everything else is anonymous memory
    assert abs(plan.parts["decoder_weights"] - measured["RssFile"]) <= 0.10 * measured["RssFile"], (plan.parts, measured)
