"""Write the GLM-4.6V projector (downsample + merger) as `projector-<QUANT>.gguf` with the `gguf` package.

The projector turns the ViT output [N, hidden] into decoder embeddings [N/4, out_hidden]; `edge/vision/numpy_projector.py`
runs it in numpy. File layout (arch `glm-edge-projector`, format version `FORMAT_VERSION`):

  tensors  downsample.weight                  [out_hidden, m*m*hidden]  Conv2d(k=m) as a matrix whose
                                              columns follow the merge-block rows: (dy, dx, channel)
           downsample.bias                    [out_hidden]
           merger.proj.weight                 [out_hidden, out_hidden]
           merger.post_projection_norm.weight / .bias   [out_hidden]   (LayerNorm)
           merger.gate_proj.weight / merger.up_proj.weight   [intermediate, out_hidden]
           merger.down_proj.weight            [out_hidden, intermediate]
           (an optional `<linear>.bias` of the checkpoint is written the same way)
  keys     glm-edge-projector.{format_version, vision_hidden_size, out_hidden_size, intermediate_size,
           spatial_merge_size, layer_norm_eps, hidden_act}, general.file_type

Quant types: F32; F16 (matrices F16); Q8_0 (matrices Q8_0 via `gguf.quants.quantize`, or F16 where a row
is not a multiple of 32). Vectors (biases, norms) are always F32. The file appears only when complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
from gguf.quants import quantize

from convert.atomic import atomic_output
from convert.checkpoint import Checkpoint
from convert.vision_onnx import visual_prefix
from edge.errors import ConversionError

ARCH = "glm-edge-projector"
FORMAT_VERSION = 1
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm default in Glm4vVisionPatchMerger; not in config.json
QUANTS = {
    "F32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "F16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "Q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
LINEARS = ("merger.proj", "merger.gate_proj", "merger.up_proj", "merger.down_proj")


def downsample_matrix(weight: np.ndarray) -> np.ndarray:
    """Conv2d weight [out, hidden, m, m] -> [out, m*m*hidden] acting on m*m consecutive block rows.

    Block rows come in (dy, dx) order, so column (dy*m + dx)*hidden + c must hold W[:, c, dy, dx].
    """
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ConversionError(f"downsample.weight has shape {list(weight.shape)}, expected [out, hidden, m, m]")
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1))


def projector_tensors(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """Every projector tensor as float32, keyed by its GGUF name, shapes checked against the config."""
    spec, p = ckpt.spec.vision, visual_prefix(ckpt)
    act = ckpt.config.get("vision_config", {}).get("hidden_act", "silu")
    if act != "silu":
        raise ConversionError(f"config.json: vision_config.hidden_act is {act!r}; the projector supports 'silu'")
    out, hid, inter, m = spec.out_hidden_size, spec.hidden_size, spec.intermediate_size, spec.spatial_merge_size
    tensors = {
        "downsample.weight": downsample_matrix(ckpt.get(p + "downsample.weight", (out, hid, m, m))),
        "downsample.bias": ckpt.get(p + "downsample.bias", (out,)),
        "merger.post_projection_norm.weight": ckpt.get(p + "merger.post_projection_norm.weight", (out,)),
        "merger.post_projection_norm.bias": ckpt.get(p + "merger.post_projection_norm.bias", (out,)),
    }
    shapes = {"merger.proj": (out, out), "merger.gate_proj": (inter, out), "merger.up_proj": (inter, out),
              "merger.down_proj": (out, inter)}
    for name in LINEARS:
        tensors[name + ".weight"] = ckpt.get(f"{p}{name}.weight", shapes[name])
        if ckpt.has(f"{p}{name}.bias"):
            tensors[name + ".bias"] = ckpt.get(f"{p}{name}.bias", (shapes[name][0],))
    return tensors


def _encode(array: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """The stored array and its type: vectors F32; matrices in qtype (Q8_0 rows must divide by 32)."""
    if array.ndim == 1 or qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32), GGMLQuantizationType.F32
    if qtype == GGMLQuantizationType.Q8_0 and array.shape[-1] % 32 == 0:
        return quantize(np.ascontiguousarray(array, dtype=np.float32), qtype), qtype
    return np.ascontiguousarray(array, dtype=np.float16), GGMLQuantizationType.F16


def export_projector(ckpt: Checkpoint, out_dir: str | Path, quant: str = "F32") -> Path:
    """Write `projector-<quant>.gguf` into out_dir and return its path."""
    if quant not in QUANTS:
        raise ConversionError(f"projector quant {quant!r} is not one of {list(QUANTS)}")
    qtype, file_type = QUANTS[quant]
    spec = ckpt.spec.vision
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"projector-{quant}.gguf"
    tensors = projector_tensors(ckpt)
    try:
        with atomic_output(target) as tmp:
            writer = GGUFWriter(tmp, ARCH)
            writer.add_name("GLM-4.6V vision projector")
            writer.add_file_type(int(file_type))
            writer.add_uint32(f"{ARCH}.format_version", FORMAT_VERSION)
            writer.add_uint32(f"{ARCH}.vision_hidden_size", spec.hidden_size)
            writer.add_uint32(f"{ARCH}.out_hidden_size", spec.out_hidden_size)
            writer.add_uint32(f"{ARCH}.intermediate_size", spec.intermediate_size)
            writer.add_uint32(f"{ARCH}.spatial_merge_size", spec.spatial_merge_size)
            writer.add_float32(f"{ARCH}.layer_norm_eps", LAYER_NORM_EPS)
            writer.add_string(f"{ARCH}.hidden_act", "silu")
            for name, array in tensors.items():
                data, dtype = _encode(array, qtype)
                writer.add_tensor(name, data, raw_dtype=dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    except OSError as e:
        raise ConversionError(f"writing {target} failed: {e}") from e
    return target
