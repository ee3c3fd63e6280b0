"""Write an llama.cpp-compatible vision projector (`mmproj-<QUANT>.gguf`, projector type `glm4v`).

The file holds the same ViT + projector weights as a bundle's ONNX encoder and projector GGUF, laid out
exactly as llama.cpp's own converter writes them (`convert_hf_to_gguf.py --mmproj`, class
`Glm4VVisionModel` in conversion/qwen3vl.py on top of `MmprojModel`), so that llama.cpp's mtmd vision path
(`clip_graph_glm4v`, tools/mtmd/models/glm4v.cpp) and llama-server run on identical weights. Used by the
benchmarks as the peer artifact, and by users who want to take a glm-edge conversion to llama-server.

Layout (arch `clip`, `general.type` = `mmproj`):

  tensors  v.patch_embd.weight / v.patch_embd.weight.1  Conv3d [hid, C, T=2, P, P] split along T into two
                                                         Conv2d kernels [hid, C, P, P]
           v.patch_embd.bias, v.norm_embd.weight, v.position_embd.weight [G*G, hid]
           v.blk.{i}.{ln1, attn_qkv, attn_out, ln2, ffn_gate, ffn_up, ffn_down}.{weight, bias?}
           v.post_ln.weight
           mm.patch_merger.weight [out, hid, m, m] (Conv2d kept 4-D) and .bias
           mm.model.fc.weight, mm.post_norm.{weight, bias}, mm.{gate, up, down}.weight (+ .bias if any)
  keys     clip.projector_type=glm4v, clip.has_vision_encoder, clip.use_silu (hidden_act),
           clip.vision.{projection_dim, image_size, patch_size, embedding_length, feed_forward_length,
           block_count, attention.head_count, attention.layer_norm_epsilon, image_mean, image_std},
           general.{architecture, type, name, file_type, quantization_version}

Tensor types follow the converter's rules: vectors, norms, biases and the position table are F32; the
two patch-embedding kernels and the patch merger are F16 in an F16 file and F32 otherwise (also in Q8_0);
every other matrix has the file's type (Q8_0 falls back to F16 where a row does not divide by 32).
Names come from gguf-py's tensor map (the one llama.cpp's converter uses). Tensors stream to disk one at
a time (bounded memory at full size); the file appears only when complete (temporary name + rename).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import (
    GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, GGUFType, GGUFWriter, MODEL_ARCH, MODEL_ARCH_NAMES,
    MODEL_TENSOR, TENSOR_NAMES, VisionProjectorType, get_tensor_name_map,
)
from gguf.quants import quantize

from convert.atomic import atomic_output
from convert.checkpoint import Checkpoint, read_json
from convert.gguf_stream import write_streamed
from convert.projector_gguf import QUANTS  # the same three weight types as the projector
from convert.vision_onnx import visual_prefix
from edge.errors import ConversionError

ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.MMPROJ]  # "clip"
PATCH = TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_PATCH]  # "v.patch_embd"
POSITION = TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_POS] + ".weight"  # "v.position_embd.weight"


def mmproj_filename(quant: str) -> str:
    return f"mmproj-{quant}.gguf"


def mmproj_plan(ckpt: Checkpoint) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """(gguf name, shape, loader of the float32 array) for every vision/projector tensor, mapped as
    llama.cpp's converter maps them. Every tensor under the visual prefix must map; an unknown one raises."""
    spec = ckpt.spec.vision
    prefix = visual_prefix(ckpt)
    tmap = get_tensor_name_map(MODEL_ARCH.MMPROJ, spec.depth)
    plan = []
    for name in sorted(n for n in ckpt.tensors if n.startswith(prefix)):
        hf = "visual." + name[len(prefix):]  # the converter renames model.visual.* to visual.*
        shape = ckpt.shape(name)
        if hf == "visual.patch_embed.proj.weight":
            if len(shape) != 5 or shape[2] != 2:
                raise ConversionError(
                    f"{name} has shape {list(shape)}; llama.cpp's glm4v graph needs a Conv3d kernel "
                    "[hidden, C, 2, P, P] (temporal_patch_size 2)"
                )
            half = shape[:2] + shape[3:]
            for t, suffix in ((0, ".weight"), (1, ".weight.1")):  # Conv3d split into two Conv2d along T
                plan.append((PATCH + suffix, half, lambda n=name, t=t: np.ascontiguousarray(ckpt.get(n)[:, :, t])))
            continue
        if hf == "visual.patch_embed.proj.bias":
            gguf_name = PATCH + ".bias"
        else:
            gguf_name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ConversionError(f"{name}: llama.cpp's mmproj tensor map has no name for it")
        plan.append((gguf_name, shape, lambda n=name: ckpt.get(n)))
    return plan


def tensor_type(name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """The stored type llama.cpp's converter picks (MmprojModel.tensor_force_quant + prepare_tensors)."""
    if ".patch_embd.weight" in name or ".patch_merger.weight" in name:
        return GGMLQuantizationType.F16 if qtype == GGMLQuantizationType.F16 else GGMLQuantizationType.F32
    if len(shape) <= 1 or name.endswith("_norm.weight") or name == POSITION or not name.endswith(".weight"):
        return GGMLQuantizationType.F32
    block = GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:  # the converter's QuantError fallback
        return GGMLQuantizationType.F16
    return qtype


def _encode(array: np.ndarray, dtype: GGMLQuantizationType) -> np.ndarray:
    if dtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if dtype == GGMLQuantizationType.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return quantize(np.ascontiguousarray(array, dtype=np.float32), dtype)


def export_mmproj(ckpt: Checkpoint | str | os.PathLike, out_dir: str | os.PathLike, quant: str = "F16",
                  filename: str | None = None) -> Path:
    """Write `mmproj-<quant>.gguf` (or `filename`) into out_dir from an HF checkpoint; returns its path.

    quant: F32, F16 (llama.cpp's default for mmproj files) or Q8_0.
    """
    quant = quant.upper()
    if quant not in QUANTS:
        raise ConversionError(f"mmproj quant {quant!r} is not one of {', '.join(QUANTS)}")
    if not isinstance(ckpt, Checkpoint):
        ckpt = Checkpoint(ckpt)
    qtype, file_type = QUANTS[quant]
    spec, text = ckpt.spec.vision, ckpt.spec.text
    vcfg = ckpt.config.get("vision_config", {})
    act = str(vcfg.get("hidden_act", "silu")).lower()
    if act not in ("silu", "gelu"):
        raise ConversionError(f"config.json: vision_config.hidden_act is {act!r}; llama.cpp's glm4v takes silu or gelu")
    if spec.spatial_merge_size != 2 or spec.temporal_patch_size != 2:
        raise ConversionError(
            f"config.json: spatial_merge_size {spec.spatial_merge_size} / temporal_patch_size "
            f"{spec.temporal_patch_size}; llama.cpp's glm4v graph is written for 2 / 2"
        )
    plan = mmproj_plan(ckpt)
    pre = read_json(ckpt.path / "preprocessor_config.json")
    for key in ("image_mean", "image_std"):
        if key not in pre:
            raise ConversionError(f"{ckpt.path}/preprocessor_config.json: `{key}` is missing")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (filename or mmproj_filename(quant))
    try:
        with atomic_output(target) as tmp:
            writer = GGUFWriter(tmp, ARCH, use_temp_file=False)
            writer.add_type(GGUFType.MMPROJ)
            writer.add_name(ckpt.path.name)
            writer.add_file_type(int(file_type))
            # MmprojModel.set_gguf_parameters
            writer.add_clip_has_vision_encoder(True)
            writer.add_vision_projection_dim(text.hidden_size)
            writer.add_vision_image_size(spec.image_size)
            writer.add_vision_patch_size(spec.patch_size)
            writer.add_vision_embedding_length(spec.hidden_size)
            writer.add_vision_feed_forward_length(spec.intermediate_size)
            writer.add_vision_block_count(spec.depth)
            writer.add_vision_head_count(spec.num_heads)
            writer.add_vision_image_mean([float(v) for v in pre["image_mean"]])
            writer.add_vision_image_std([float(v) for v in pre["image_std"]])
            # Glm4VVisionModel.set_gguf_parameters
            writer.add_clip_projector_type(VisionProjectorType.GLM4V)
            if act == "gelu":
                writer.add_vision_use_gelu(True)
            else:
                writer.add_vision_use_silu(True)
            writer.add_vision_attention_layernorm_eps(float(spec.rms_norm_eps))
            writer.add_quantization_version(GGML_QUANT_VERSION)
            write_streamed(writer, [
                (name, shape, dtype, lambda load=load, dtype=dtype: _encode(load(), dtype))
                for name, shape, load in plan
                for dtype in [tensor_type(name, shape, qtype)]
            ])
            writer.close()
    except OSError as e:
        raise ConversionError(f"writing {target} failed: {e}") from e
    return target
