"""edge/doctor.py: the install report agrees with what the components themselves say, and each refusal says why."""

from __future__ import annotations

import json

import llama_cpp
import onnxruntime as ort
import pytest

from edge.engine.llama import gpu_layers
from edge.doctor import DEVICE_CHOICES, _decoder_choice, _projector_choice, _vision_choice, doctor_report, format_report
from edge.errors import DecoderError
from edge.vision.native import LIB_NAME


@pytest.fixture(scope="module")
def report():
    return doctor_report()


def test_report_is_json_and_complete(report):
    assert json.loads(json.dumps(report)) == report
    assert set(report) == {"platform", "llama_cpp", "onnxruntime", "native_projector", "devices"}
    assert set(report["devices"]) == set(DEVICE_CHOICES)
    for choice in report["devices"].values():
        for part in ("decoder", "projector", "vision"):
            assert {"ok", "uses", "why"} <= set(choice[part]) and choice[part]["why"]
        assert choice["ok"] == all(choice[p]["ok"] for p in ("decoder", "projector", "vision"))


def test_report_matches_the_libraries(report):
    llama = report["llama_cpp"]
    assert llama["version"] == llama_cpp.__version__
    assert llama["gpu_offload"] == bool(llama_cpp.llama_supports_gpu_offload())
    assert "CPU" in llama["system_info"]
    assert "cpu" in llama["backend_libraries"]
    assert any(d["type"] == "cpu" for d in llama["devices"])
    assert report["onnxruntime"]["providers"] == ort.get_available_providers()


def test_cpu_always_works(report):
    cpu = report["devices"]["cpu"]
    assert cpu["ok"]
    assert cpu["decoder"]["n_gpu_layers"] == 0
    assert cpu["vision"]["uses"] == "CPUExecutionProvider"
    assert cpu["projector"]["uses"] in ("ggml CPU", "numpy (CPU)")


@pytest.mark.parametrize("device", ["metal", "cuda"])
def test_gpu_choice_agrees_with_the_decoder(report, device):
    """The doctor refuses a GPU choice exactly when edge/engine/llama.py would (or when the family is absent)."""
    try:
        gpu_layers(device)
        decoder_accepts = True
    except DecoderError:
        decoder_accepts = False
    choice = report["devices"][device]["decoder"]
    if not decoder_accepts:
        assert not choice["ok"] and "without GPU offload" in choice["why"] and f"BACKEND={device}" in choice["why"]
    if not report["llama_cpp"]["gpu_offload"]:
        assert not report["devices"][device]["ok"]


def test_decoder_choice_rules():
    cpu_only = {"gpu_offload": False, "devices": [{"name": "CPU", "type": "cpu", "backend": "CPU"}],
                "backend_libraries": ["cpu"]}
    cuda = {"gpu_offload": True, "backend_libraries": ["cpu", "cuda"], "devices": [
        {"name": "CUDA0", "type": "gpu", "backend": "CUDA"}, {"name": "CPU", "type": "cpu", "backend": "CPU"}]}
    assert _decoder_choice("auto", cpu_only) == {"ok": True, "uses": "CPU", "n_gpu_layers": 0,
                                                 "why": "llama-cpp-python built without GPU offload"}
    assert _decoder_choice("auto", cuda)["uses"] == "CUDA0"
    assert _decoder_choice("cuda", cuda)["ok"]
    metal = _decoder_choice("metal", cuda)
    assert not metal["ok"] and "built without metal" in metal["why"] and "CUDA0" in metal["why"]
    no_device = dict(cuda, devices=[{"name": "CPU", "type": "cpu", "backend": "CPU"}])
    assert "has the CUDA backend but ggml found no cuda device" in _decoder_choice("cuda", no_device)["why"]
    metal_build = {"gpu_offload": True, "backend_libraries": ["blas", "cpu", "metal"],
                   "devices": [{"name": "CPU", "type": "cpu", "backend": "CPU"}]}
    assert "has the MTL backend but ggml found no metal device" in _decoder_choice("metal", metal_build)["why"]


def test_projector_and_vision_rules():
    llama = {"devices": [{"name": "MTL0", "type": "gpu", "backend": "MTL"}, {"name": "CPU", "type": "cpu", "backend": "CPU"}]}
    built = {"built": True, "error": None}
    assert _projector_choice("auto", llama, built)["uses"] == "ggml MTL0"
    assert _projector_choice("metal", llama, built)["uses"] == "ggml MTL0"
    assert _projector_choice("cpu", llama, built)["uses"] == "ggml CPU"
    assert _projector_choice("cuda", llama, built)["uses"] == "numpy (CPU)"
    missing = {"built": False, "error": "native projector library x is not built (run `make native`)"}
    assert _projector_choice("auto", llama, missing) == {"ok": True, "uses": "numpy (CPU)", "why": missing["error"]}
    ort_cpu = {"package": "onnxruntime", "providers": ["CPUExecutionProvider"]}
    assert _vision_choice("auto", ort_cpu)["uses"] == "CPUExecutionProvider"
    refused = _vision_choice("cuda", ort_cpu)
    assert not refused["ok"] and "onnxruntime-gpu" in refused["why"]
    ort_mac = {"package": "onnxruntime", "providers": ["CoreMLExecutionProvider", "CPUExecutionProvider"]}
    assert _vision_choice("metal", ort_mac)["uses"] == "CoreMLExecutionProvider"


def test_missing_native_library_is_reported(tmp_path):
    rep = doctor_report(devices=("auto",), native_library=tmp_path / LIB_NAME)
    assert rep["native_projector"]["built"] is False and "not built" in rep["native_projector"]["error"]
    assert rep["devices"]["auto"]["projector"]["uses"] == "numpy (CPU)"


def test_format_report(report):
    text = format_report(report)
    assert "llama-cpp-python" in text and "onnxruntime" in text
    for device in DEVICE_CHOICES:
        assert f"--device {device}" in text
