"""`python -m benchmarks --quick` runs end to end (tiny model, one repetition) and writes its three outputs.

Not a performance test: it checks that every scenario produced runs, medians and ratios of the expected
shape, so the benchmark code cannot rot. Absolute numbers on a tiny model mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("matplotlib")
pytest.importorskip("psutil")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    cache = tmp_path_factory.mktemp("bench-cache")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--cache", str(cache)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_json_has_every_scenario(quick_run):
    data = json.loads((quick_run / "results.json").read_text())
    info, summary, runs = data["info"], data["summary"], data["runs"]
    assert not info["errors"]
    for key in ("cpu_model", "logical_cores", "physical_cores", "ram_gb", "versions"):
        assert key in info["machine"]
    assert info["machine"]["versions"]["llama_cpp_python"] != "not installed"
    assert set(runs) == {"bandwidth", "text", "image", "transformers", "multiturn", "load", "parallel", "video",
                         "document"}
    assert all(runs[k] for k in runs), [k for k in runs if not runs[k]]

    for quant in ("Q4_K_M", "Q8_0"):
        text = summary["text"][quant]
        assert text["ours"]["decode_tps"] > 0 and text["llama.cpp"]["prefill_tps"] > 0
        assert text["ours"]["prefill_tokens"] == text["llama.cpp"]["prefill_tokens"]  # the same prompt
        assert {"prefill_tps", "decode_tps", "best_prefill_tps", "best_decode_tps"} == set(text["ratio"])
    for image, variants in summary["image"].items():
        assert {"onnx-fp32", "onnx-int8", "mtmd-F16", "mtmd-Q8_0", "torch-fp32"} <= set(variants), image
        tokens = {variants[v]["image_tokens"] for v in ("onnx-fp32", "onnx-int8", "mtmd-F16", "mtmd-Q8_0", "torch-fp32")}
        assert len(tokens) == 1  # every engine saw the same grid
        for v in ("onnx-int8", "mtmd-F16"):
            assert variants[v]["vision"] > 0 and variants[v]["prefill"] > 0
            assert variants[v]["first_token"] >= variants[v]["vision"] + variants[v]["prefill"]
        profile = summary["vision_profile"][image]
        assert profile["onnx-int8"]["vit_s"] > 0 and profile["onnx-fp32"]["projector_s"] > 0
    turns = summary["multiturn"]
    assert turns["ours"]["turn2"]["cached_tokens"] > 0 and turns["llama.cpp"]["turn2"]["cached_tokens"] == 0
    assert {(r["side"], r["quant"]) for r in summary["load"]} == {
        (side, q) for side in ("ours", "llama.cpp") for q in ("Q4_K_M", "Q8_0")}
    assert all(r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0 for r in summary["load"])
    assert summary["bandwidth"]["copy_gb_per_s"] > 0
    assert set(summary["bandwidth"]["decode"]) == {"Q4_K_M", "Q8_0"}
    par = summary["parallel"]
    assert set(par["scaling"]) == {"1", "2", "4", "8"}
    for n, row in par["scaling"].items():
        assert row["ours"]["aggregate_tps"] > 0 and row["llama.cpp"]["aggregate_tps"] > 0 and row["ratio"] > 0, n
        assert par["memory"][n]["rss_after_load_mb"] > 0
    assert set(par["ttft"]) == {"8", "1"} and all(d["samples"] == 8 for d in par["ttft"].values())
    assert all(d["first_token_p95"] >= d["first_token_p50"] > 0 for d in par["ttft"].values())
    for n_batch, row in par["admission"].items():
        loaded = row["with running streams"]
        assert loaded["gap_before_n"] > 0 and loaded["gap_after_n"] > 0 and row["solo"]["first_token_s"] > 0, n_batch
    video = summary["video"]  # the second question reuses every frame group's embedding and the KV prefix
    assert video["turn1"]["encoded"] == video["turn1"]["video_frames"] / 2 > 0 and video["turn1"]["vision"] > 0
    assert video["turn2"]["encoded"] == 0 and video["turn2"]["cached_tokens"] > video["turn1"]["video_tokens"]
    assert video["turn2_no_kv"]["images_cached"] == video["turn1"]["encoded"] and video["turn2_no_kv"]["vision"] == 0
    assert all(video["split"][k] > 0 for k in ("demux_s", "decode_s", "resize_s"))
    doc = summary["document"]["f16"]
    assert doc["split"]["pages"] == doc["turn1"]["images"] == doc["turn1"]["encoded"] == 3
    assert doc["turn2"]["encoded"] == 0 and doc["turn2_no_kv"]["images_cached"] == 3
    assert doc["memory"]["kv_bytes_per_token"] > 0 and doc["memory"]["kv_mib_at_128k"] > 0
    names = {t["target"].split(" ")[0] for t in summary["targets"]}
    assert {"decode", "prefill", "vision", "image", "second", "parallel:"} <= names


def test_markdown_and_charts(quick_run):
    md = (quick_run / "results.md").read_text()
    for heading in ("## Targets", "## Text only", "## Image time to first token", "## Multi-turn",
                    "## Load time and memory", "## The physical limit", "## Parallel sequences", "## Video",
                    "## Documents", "### What 128K context costs"):
        assert heading in md
    assert "mtmd-F16" in md and "onnx-int8" in md and "torch-fp32" in md
    charts = sorted(p.name for p in quick_run.glob("*.png"))
    assert charts == ["image_ttft.png", "load_memory.png", "multiturn.png", "parallel.png", "text.png"]
    for name in charts:
        data = (quick_run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({name})" in md
