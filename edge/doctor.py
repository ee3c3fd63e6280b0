"""What this install can run on, and what each `--device` choice would pick for every component, and why not.

    report = doctor_report()            # JSON-serialisable dict
    print(format_report(report))        # the human-readable form of `glm-edge doctor`

Components and how a device choice maps to them (the same rules as the runtime):
  decoder    llama.cpp offload: cpu -> 0 layers; auto -> all layers when llama-cpp-python supports GPU
             offload; metal/cuda -> all layers, refused when this build has no GPU offload (edge/engine/llama.py).
  projector  the native ggml library on ggml's device for the choice (auto: GPU, integrated GPU, then CPU;
             metal/cuda: that backend family), else the numpy projector on the CPU (edge/vision/projector.py).
  vision     the onnxruntime execution provider: cuda -> CUDA, metal -> CoreML, cpu -> CPU, auto -> the first
             of CUDA, ROCm, CoreML, DirectML, CPU that this onnxruntime has (edge/vision/encoder.py).
Nothing here loads a model; it reads llama.cpp's and onnxruntime's capabilities and ggml's device list.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys
from pathlib import Path
from typing import Any

from edge.errors import DecoderError
from edge.options import Device

DEVICE_CHOICES = tuple(Device.values())
_FAMILY = {"metal": "MTL", "cuda": "CUDA", "vulkan": "Vulkan"}  # --device -> ggml backend registry name


def _dist_version(*names: str) -> tuple[str | None, str | None]:
    for name in names:
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:
            continue
    return None, None


def _llama_cpp_section() -> dict[str, Any]:
    from edge.engine.llama import ggml_devices, system_info

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "native"))
    try:
        from find_ggml import find

        include, libdir, libs = find()
        built = {"libdir": str(libdir), "include": str(include), "backend_libraries": libs}
    except (ImportError, LookupError) as e:
        built = {"libdir": None, "include": None, "backend_libraries": [], "error": str(e)}
    finally:
        sys.path.pop(0)
    return {**system_info(), "devices": ggml_devices(), **built}


def _onnxruntime_section() -> dict[str, Any]:
    package, version = _dist_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-silicon", "onnxruntime-directml",
                                     "onnxruntime-openvino")
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError as e:
        return {"package": package, "version": version, "providers": [], "error": str(e)}
    return {"package": package, "version": version, "providers": providers}


def _native_section(library: str | Path | None) -> dict[str, Any]:
    from edge.vision.native import NativeUnavailableError, default_library_path, load_library

    path = Path(library) if library is not None else default_library_path()
    try:
        load_library(path)
    except NativeUnavailableError as e:
        return {"built": False, "library": str(path), "error": str(e)}
    return {"built": True, "library": str(path), "error": None}


def _family_devices(devices: list[dict], family: str) -> list[dict]:
    return [d for d in devices if d["backend"].lower() == family.lower()]


def _decoder_choice(device: str, llama: dict) -> dict[str, Any]:
    """What the decoder would run on; the offload decision itself is `gpu_layers`, as the runtime's."""
    from edge.engine.llama import gpu_layers

    devices, offload = llama["devices"], llama["gpu_offload"]
    gpus = [d for d in devices if d["type"] in ("gpu", "igpu")]
    try:
        layers = gpu_layers(device, offload)
    except DecoderError:
        return {"ok": False, "uses": None, "n_gpu_layers": None,
                "why": f"llama-cpp-python built without GPU offload (no {device}); reinstall with "
                       f"`make serve BACKEND={device}`"}
    if device == Device.CPU:
        return {"ok": True, "uses": "CPU", "n_gpu_layers": layers, "why": "--device cpu"}
    if device == Device.AUTO:
        if offload and gpus:
            return {"ok": True, "uses": gpus[0]["name"], "n_gpu_layers": layers, "why": "GPU offload available"}
        why = ("llama-cpp-python built without GPU offload" if not offload
               else "GPU offload built in but no GPU device found (driver missing?)")
        return {"ok": True, "uses": "CPU", "n_gpu_layers": layers, "why": why}
    family = _FAMILY.get(device, device)
    mine = _family_devices(devices, family)
    if not mine:
        built = device.lower() in [b.lower() for b in llama["backend_libraries"]]  # libggml-<device>.so
        why = (f"llama-cpp-python has the {family} backend but ggml found no {device} device" if built
               else f"llama-cpp-python built without {device} (it offloads to {', '.join(g['name'] for g in gpus) or 'nothing'})")
        return {"ok": False, "uses": None, "n_gpu_layers": None, "why": why}
    return {"ok": True, "uses": mine[0]["name"], "n_gpu_layers": layers, "why": f"{device} offload"}


def _projector_choice(device: str, llama: dict, native: dict) -> dict[str, Any]:
    if not native["built"]:
        return {"ok": True, "uses": "numpy (CPU)", "why": native["error"]}
    devices = llama["devices"]
    if device == "cpu":
        dev = next((d for d in devices if d["type"] == "cpu"), None)
        why = "--device cpu"
    elif device == "auto":
        dev = next((d for t in ("gpu", "igpu", "cpu") for d in devices if d["type"] == t), None)
        why = "best ggml device (GPU, integrated GPU, then CPU)"
    else:
        family = _FAMILY.get(device, device)
        mine = _family_devices(devices, family)
        dev = mine[0] if mine else None
        why = f"{device} device" if dev else f"ggml in this llama-cpp-python has no {device} device"
    if dev is None:
        return {"ok": True, "uses": "numpy (CPU)", "why": why + "; the runtime falls back to numpy"}
    return {"ok": True, "uses": f"ggml {dev['name']}", "why": why}


def _vision_choice(device: str, ort_info: dict) -> dict[str, Any]:
    from edge.errors import VisionError
    from edge.vision.encoder import select_providers

    choice = Device.parse(device, "--device").vision_provider
    available = ort_info["providers"]
    try:
        providers = select_providers(choice, available)
    except VisionError as e:
        hint = {"cuda": " (install onnxruntime-gpu: `make serve BACKEND=cuda`)",
                "coreml": " (onnxruntime's macOS wheels have CoreML)"}.get(choice, "")
        del e  # its text repeats the provider list; say it shorter
        return {"ok": False, "uses": None, "provider": choice,
                "why": f"onnxruntime package {ort_info['package']!r} has no {choice} provider{hint}; "
                       f"it has {', '.join(available) or 'none'}"}
    return {"ok": True, "uses": providers[0], "provider": choice, "why": f"provider {choice!r}"}


def doctor_report(devices: tuple[str, ...] = DEVICE_CHOICES, native_library: str | Path | None = None) -> dict[str, Any]:
    """The install report: platform, llama.cpp, onnxruntime, native projector, and per device choice what runs where.

    Returns a JSON-serialisable dict: {"platform", "llama_cpp", "onnxruntime", "native_projector",
    "devices": {choice: {"ok", "decoder", "projector", "vision"}}}; each component entry has "ok", "uses"
    (what would run it, None when refused) and "why".
    """
    llama = _llama_cpp_section()
    ort_info = _onnxruntime_section()
    native = _native_section(native_library)
    choices = {}
    for device in devices:
        parts = {
            "decoder": _decoder_choice(device, llama),
            "projector": _projector_choice(device, llama, native),
            "vision": _vision_choice(device, ort_info),
        }
        choices[device] = {"ok": all(p["ok"] for p in parts.values()), **parts}
    return {
        "platform": {"system": platform.system(), "machine": platform.machine(), "python": platform.python_version()},
        "llama_cpp": llama,
        "onnxruntime": ort_info,
        "native_projector": native,
        "devices": choices,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text lines (what `glm-edge doctor` prints)."""
    p, llama, ort_info, native = report["platform"], report["llama_cpp"], report["onnxruntime"], report["native_projector"]
    lines = [
        f"platform      {p['system']} {p['machine']}, Python {p['python']}",
        f"llama.cpp     llama-cpp-python {llama['version']}, GPU offload {'yes' if llama['gpu_offload'] else 'no'}, "
        f"ggml backends: {', '.join(llama['backend_libraries']) or '?'}",
        f"              {llama['system_info']}",
    ]
    for d in llama["devices"]:
        mem = f", {d['memory_free_mib']}/{d['memory_total_mib']} MiB free" if d["type"] != "cpu" else ""
        lines.append(f"  device      {d['name']} ({d['type']}, {d['backend']}): {d['description']}{mem}")
    lines.append(f"onnxruntime   {ort_info['package']} {ort_info['version']}: {', '.join(ort_info['providers'])}")
    lines.append(f"native        {'built' if native['built'] else 'not built'}: {native['library']}"
                 + (f" ({native['error']})" if native["error"] else ""))
    for device, choice in report["devices"].items():
        lines.append(f"--device {device:<5} {'ok' if choice['ok'] else 'REFUSED'}")
        for part in ("decoder", "projector", "vision"):
            c = choice[part]
            lines.append(f"  {part:<10}  {c['uses'] or 'refused'}: {c['why']}")
    return "\n".join(lines)


if __name__ == "__main__":
    import json

    rep = doctor_report()
    print(json.dumps(rep, indent=1) if "--json" in sys.argv else format_report(rep))
