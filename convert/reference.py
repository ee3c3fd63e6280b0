"""Deterministic GLM-4.6V-Flash-layout reference checkpoints, written without torch.

No model hub is reachable where glm-edge is built and tested, so it proves itself on checkpoints it
writes itself, in the exact HF layout of the real one: `config.json` (real key names), sharded bf16
safetensors with the real tensor names, a byte-level BPE `tokenizer.json` trained on a small built-in
multilingual corpus with the GLM-4 pre-tokenizer and the full GLM special-token set, the chat template,
`preprocessor_config.json` and `generation_config.json`.

Sizes: `tiny` (seconds; tests and the demo bundle) and `wide` (real widths and vocab, depth from
arguments; benchmarks). Weights are drawn per tensor from a seed and the tensor name, in row chunks,
so a wide checkpoint streams to disk with bounded memory and any tensor is reproducible on its own.
Scales keep activations near unit variance and put logits at a std of about 4, so greedy choices depend
on the input and have top-1 margins far wider than float reordering noise.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from convert.safetensors_writer import write_shards
from convert.tokenizer_builder import build_tokenizer_files

IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Size:
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    mrope_section: tuple[int, int, int]
    vocab_size: int | None  # None: tokenizer size rounded up (a few spare embedding rows, like the real one)
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    n_shards: int


SIZES = {
    # hidden 256 keeps K-quants meaningful (rows of 256); 608 is not a multiple of 256, like 13696.
    "tiny": Size(256, 2, 4, 2, 608, (4, 6, 6), None, 64, 2, 2, 512, 2),
    # Real GLM-4.6V-Flash widths (shared/docs/glm46v-flash.md section 1); depth is chosen per call.
    "wide": Size(4096, 40, 32, 2, 13696, (8, 12, 12), 151552, 1536, 24, 12, 13696, 4),
}


def make_config(size: Size, token_ids: dict[str, int], vocab_size: int) -> dict:
    eos = [token_ids["<|endoftext|>"], token_ids["<|user|>"], token_ids["<|observation|>"]]
    return {
        "architectures": ["Glm4vForConditionalGeneration"],
        "model_type": "glm4v",
        "image_start_token_id": token_ids["<|begin_of_image|>"],
        "image_end_token_id": token_ids["<|end_of_image|>"],
        "video_start_token_id": token_ids["<|begin_of_video|>"],
        "video_end_token_id": token_ids["<|end_of_video|>"],
        "image_token_id": token_ids["<|image|>"],
        "video_token_id": token_ids["<|video|>"],
        "tie_word_embeddings": False,
        "transformers_version": "5.0.0",
        "text_config": {
            "model_type": "glm4v_text",
            "vocab_size": vocab_size,
            "hidden_size": size.text_hidden,
            "intermediate_size": size.text_intermediate,
            "num_hidden_layers": size.text_layers,
            "num_attention_heads": size.text_heads,
            "num_key_value_heads": size.text_kv_heads,
            "head_dim": size.text_hidden // size.text_heads,
            "hidden_act": "silu",
            "attention_bias": True,
            "attention_dropout": 0.0,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-05,
            "initializer_range": 0.02,
            "use_cache": True,
            "dtype": "bfloat16",
            "pad_token_id": token_ids["<|endoftext|>"],
            "eos_token_id": eos,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 500000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": list(size.mrope_section),
            },
        },
        "vision_config": {
            "model_type": "glm4v_vision",
            "depth": size.vision_depth,
            "hidden_size": size.vision_hidden,
            "num_heads": size.vision_heads,
            "out_hidden_size": size.text_hidden,
            "intermediate_size": size.vision_intermediate,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "image_size": 336,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "in_channels": 3,
            "rms_norm_eps": 1e-05,
            "initializer_range": 0.02,
        },
    }


def tensor_plan(config: dict) -> list[tuple[str, tuple[int, ...], str, float, float]]:
    """(name, shape, kind, scale, offset) for every tensor; values = offset + scale * N(0, 1)."""
    t, v = config["text_config"], config["vision_config"]
    h, inter, vocab = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    hd = t["head_dim"]
    q, kv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    vh, vo, vi = v["hidden_size"], v["out_hidden_size"], v["intermediate_size"]
    p, tp, m = v["patch_size"], v["temporal_patch_size"], v["spatial_merge_size"]
    npos = (v["image_size"] // p) ** 2

    def lin(name, out, inp, gain=1.0):
        return (name, (out, inp), "w", gain / np.sqrt(inp), 0.0)

    def norm(name, n):
        return (name, (n,), "norm", 0.1, 1.0)

    def bias(name, n, scale=0.1):
        return (name, (n,), "bias", scale, 0.0)

    plan = [("model.language_model.embed_tokens.weight", (vocab, h), "embed", 1.0, 0.0)]
    for i in range(t["num_hidden_layers"]):
        b = f"model.language_model.layers.{i}."
        plan += [
            norm(b + "input_layernorm.weight", h),
            lin(b + "self_attn.q_proj.weight", q, h), bias(b + "self_attn.q_proj.bias", q, 0.5),
            lin(b + "self_attn.k_proj.weight", kv, h), bias(b + "self_attn.k_proj.bias", kv, 0.5),
            lin(b + "self_attn.v_proj.weight", kv, h), bias(b + "self_attn.v_proj.bias", kv),
            lin(b + "self_attn.o_proj.weight", h, q),
            norm(b + "post_self_attn_layernorm.weight", h),
            norm(b + "post_attention_layernorm.weight", h),
            lin(b + "mlp.gate_up_proj.weight", 2 * inter, h),
            lin(b + "mlp.down_proj.weight", h, inter),
            norm(b + "post_mlp_layernorm.weight", h),
        ]
    plan += [norm("model.language_model.norm.weight", h), lin("lm_head.weight", vocab, h, gain=4.0)]
    vb = "model.visual."
    plan += [
        (vb + "patch_embed.proj.weight", (vh, 3, tp, p, p), "w", 1.0 / np.sqrt(3 * tp * p * p), 0.0),
        bias(vb + "patch_embed.proj.bias", vh),
        norm(vb + "post_conv_layernorm.weight", vh),
        (vb + "embeddings.position_embedding.weight", (npos, vh), "w", 0.5, 0.0),
    ]
    for i in range(v["depth"]):
        b = f"{vb}blocks.{i}."
        plan += [
            norm(b + "norm1.weight", vh),
            lin(b + "attn.qkv.weight", 3 * vh, vh),
            lin(b + "attn.proj.weight", vh, vh),
            norm(b + "norm2.weight", vh),
            lin(b + "mlp.gate_proj.weight", vo, vh),
            lin(b + "mlp.up_proj.weight", vo, vh),
            lin(b + "mlp.down_proj.weight", vh, vo, gain=0.5),
        ]
    plan += [
        norm(vb + "post_layernorm.weight", vh),
        (vb + "downsample.weight", (vo, vh, m, m), "w", 1.0 / np.sqrt(vh * m * m), 0.0),
        bias(vb + "downsample.bias", vo),
        lin(vb + "merger.proj.weight", vo, vo),
        norm(vb + "merger.post_projection_norm.weight", vo),
        bias(vb + "merger.post_projection_norm.bias", vo),
        lin(vb + "merger.gate_proj.weight", vi, vo),
        lin(vb + "merger.up_proj.weight", vi, vo),
        lin(vb + "merger.down_proj.weight", vo, vi),
    ]
    return plan


def tensor_chunks(seed: int, name: str, shape: tuple[int, ...], scale: float, offset: float, rows: int = 4096):
    """Yield the tensor as float32 row chunks; the same (seed, name) always gives the same values."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else shape[0]
    n_rows = shape[0] if len(shape) > 1 else 1
    for start in range(0, n_rows, rows):
        count = min(rows, n_rows - start)
        chunk = rng.standard_normal((count, row), dtype=np.float32)
        chunk *= np.float32(scale)
        chunk += np.float32(offset)
        yield chunk


def _data_file(name: str) -> str:
    return resources.files("convert.data").joinpath(name).read_text(encoding="utf-8")


def write_reference(
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    text_layers: int | None = None,
    vision_depth: int | None = None,
    progress: bool = False,
) -> Path:
    """Write a reference checkpoint folder; it appears only when complete."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    if text_layers is not None:
        spec = _replace(spec, text_layers=text_layers)
    if vision_depth is not None:
        spec = _replace(spec, vision_depth=vision_depth)
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        token_ids, n_tokens = build_tokenizer_files(tmp, _data_file("corpus.txt"))
        vocab = spec.vocab_size or (n_tokens + 63) // 64 * 64 + 64
        config = make_config(spec, token_ids, vocab)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "chat_template.jinja").write_text(_data_file("chat_template.jinja"))
        (tmp / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(_generation_config(config), indent=2) + "\n")
        plan = tensor_plan(config)
        tensors = [
            (name, shape, lambda n=name, s=shape, sc=scale, o=offset: tensor_chunks(seed, n, s, sc, o))
            for name, shape, _, scale, offset in plan
        ]
        write_shards(tmp, tensors, spec.n_shards, progress=progress)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace(spec: Size, **changes) -> Size:
    return Size(**{**spec.__dict__, **changes})


def _preprocessor_config() -> dict:
    return {
        "size": {"shortest_edge": 12544, "longest_edge": 9633792},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_processor_type": "Glm46VImageProcessor",
        "processor_class": "Glm46VProcessor",
    }


def _generation_config(config: dict) -> dict:
    t = config["text_config"]
    return {
        "do_sample": True,
        "eos_token_id": t["eos_token_id"],
        "pad_token_id": t["pad_token_id"],
        "temperature": 0.8,
        "top_p": 0.6,
        "top_k": 2,
        "repetition_penalty": 1.1,
        "transformers_version": "5.0.0",
    }
