"""The GLM-4.6V-Flash text decoder as a llama.cpp GGUF (arch `glm4`, M-RoPE).

Float types (F32, F16, BF16) are written directly with `gguf.GGUFWriter`, tensor by tensor from the lazy
checkpoint. Quantized types are produced by llama.cpp's own quantizer (convert/quantize.py) from a lossless
BF16 intermediate. Q/K weights and biases are permuted per head from HF's interleaved rotary pairs to the
NeoX halves that ggml's M-RoPE kernel expects (shared/docs/glm46v-flash.md section 6).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np

from convert.checkpoint import Checkpoint, ModelSpec
from convert.gguf_stream import write_streamed
from convert.tokenizer_vocab import Vocab, read_vocab

FLOAT_TYPES = {
    "F32": gguf.GGMLQuantizationType.F32,
    "F16": gguf.GGMLQuantizationType.F16,
    "BF16": gguf.GGMLQuantizationType.BF16,
}
FILE_TYPES = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
}
TEXT_PREFIX = "model.language_model."


def interleaved_to_neox(w: np.ndarray, head_dim: int, rotary_dims: int) -> np.ndarray:
    """Per head, reorder the first `rotary_dims` output rows as rows[0::2] then rows[1::2]."""
    rows = w.reshape(-1, head_dim, *w.shape[1:])
    rot = rows[:, :rotary_dims]
    out = np.concatenate([rot[:, 0::2], rot[:, 1::2], rows[:, rotary_dims:]], axis=1)
    return out.reshape(w.shape)


def tensor_map(spec: ModelSpec) -> list[tuple[str, str, tuple[int, ...]]]:
    """(gguf name, HF name, expected HF shape) for every decoder tensor, in file order."""
    t = spec.text
    q, kv = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    out = [("token_embd.weight", TEXT_PREFIX + "embed_tokens.weight", (t.vocab_size, t.hidden_size))]
    for i in range(t.num_layers):
        hf = f"{TEXT_PREFIX}layers.{i}."
        g = f"blk.{i}."
        out += [
            (g + "attn_norm.weight", hf + "input_layernorm.weight", (t.hidden_size,)),
            (g + "attn_q.weight", hf + "self_attn.q_proj.weight", (q, t.hidden_size)),
            (g + "attn_q.bias", hf + "self_attn.q_proj.bias", (q,)),
            (g + "attn_k.weight", hf + "self_attn.k_proj.weight", (kv, t.hidden_size)),
            (g + "attn_k.bias", hf + "self_attn.k_proj.bias", (kv,)),
            (g + "attn_v.weight", hf + "self_attn.v_proj.weight", (kv, t.hidden_size)),
            (g + "attn_v.bias", hf + "self_attn.v_proj.bias", (kv,)),
            (g + "attn_output.weight", hf + "self_attn.o_proj.weight", (t.hidden_size, q)),
            (g + "post_attention_norm.weight", hf + "post_self_attn_layernorm.weight", (t.hidden_size,)),
            (g + "ffn_norm.weight", hf + "post_attention_layernorm.weight", (t.hidden_size,)),
            (g + "ffn_up.weight", hf + "mlp.gate_up_proj.weight", (2 * t.intermediate_size, t.hidden_size)),
            (g + "ffn_down.weight", hf + "mlp.down_proj.weight", (t.hidden_size, t.intermediate_size)),
            (g + "post_ffw_norm.weight", hf + "post_mlp_layernorm.weight", (t.hidden_size,)),
        ]
    out.append(("output_norm.weight", TEXT_PREFIX + "norm.weight", (t.hidden_size,)))
    lm_head = "lm_head.weight"
    if spec.tie_word_embeddings:
        lm_head = TEXT_PREFIX + "embed_tokens.weight"
    out.append(("output.weight", lm_head, (t.vocab_size, t.hidden_size)))
    return out


def _loader(ckpt: Checkpoint, gguf_name: str, hf_name: str, shape, bf16_bits: bool) -> Callable[[], Iterator[np.ndarray]]:
    """Load one tensor as float32 (or bf16 bits when writing BF16 matrices) in row blocks; Q/K rows permuted.

    Q/K are permuted per head, so they come whole (a few tens of MB at real width); every other tensor comes
    in blocks of about 64 MB of float32 (Checkpoint.iter_rows), so the 151552 x 4096 tables never sit in RAM."""
    t = ckpt.spec.text

    def load() -> Iterator[np.ndarray]:
        if gguf_name.startswith("blk.") and gguf_name.split(".")[2] in ("attn_q", "attn_k"):
            data = ckpt.get_bf16_bits(hf_name, shape) if bf16_bits else ckpt.get(hf_name, shape)
            yield interleaved_to_neox(data, t.head_dim, t.rotary_dims)
            return
        yield from ckpt.iter_rows(hf_name, shape, bf16_bits=bf16_bits)

    return load


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Tensor bytes for the file; bf16 bit arrays (uint16) pass through unchanged."""
    if data.dtype == np.uint16:
        return data
    # 1-D tensors (norms, biases) stay F32 in every file type, as llama.cpp's own converter does.
    if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def write_metadata(writer: gguf.GGUFWriter, ckpt: Checkpoint, vocab: Vocab, quant: str, converter_version: str):
    spec = ckpt.spec
    t = spec.text
    writer.add_name("GLM-4.6V-Flash decoder")
    writer.add_context_length(t.max_position_embeddings)
    writer.add_embedding_length(t.hidden_size)
    writer.add_block_count(t.num_layers)
    writer.add_feed_forward_length(t.intermediate_size)
    writer.add_head_count(t.num_heads)
    writer.add_head_count_kv(t.num_kv_heads)
    writer.add_key_length(t.head_dim)
    writer.add_value_length(t.head_dim)
    writer.add_layer_norm_rms_eps(t.rms_norm_eps)
    writer.add_rope_freq_base(t.rope_theta)
    writer.add_rope_dimension_count(t.rotary_dims)
    writer.add_rope_dimension_sections(list(t.mrope_section) + [0] * (4 - len(t.mrope_section)))
    writer.add_file_type(FILE_TYPES.get(quant, gguf.LlamaFileType.MOSTLY_BF16))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("glm4")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_eos_token_id(vocab.ids["<|endoftext|>"])
    writer.add_bos_token_id(vocab.ids["<|endoftext|>"])
    writer.add_unk_token_id(vocab.ids["<|endoftext|>"])
    writer.add_pad_token_id(vocab.ids["<|endoftext|>"])
    writer.add_eot_token_id(vocab.ids["<|user|>"])
    # <|observation|> ends a turn that called a tool; published GGUFs forget it and the model then
    # writes a fake tool result. llama.cpp adds eos, eot and eom ids to its end-of-generation set.
    writer.add_eom_token_id(vocab.ids["<|observation|>"])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
    writer.add_string("glm_edge.converter_version", converter_version)
    writer.add_string("glm_edge.source_architecture", spec.architecture)
    writer.add_string("glm_edge.source_config_sha256", config_sha256(ckpt))


def config_sha256(ckpt: Checkpoint) -> str:
    return hashlib.sha256((ckpt.path / "config.json").read_bytes()).hexdigest()


def iter_tensors(ckpt: Checkpoint, quant: str) -> Iterator[tuple[str, Callable[[], Iterator[np.ndarray]], tuple[int, ...]]]:
    for gguf_name, hf_name, shape in tensor_map(ckpt.spec):
        bf16_bits = quant == "BF16" and len(shape) > 1
        yield gguf_name, _loader(ckpt, gguf_name, hf_name, shape, bf16_bits), shape


def write_float_gguf(ckpt: Checkpoint, path: Path, quant: str, converter_version: str, progress=None) -> None:
    """Write the decoder with float tensors of type `quant` (F32/F16/BF16) to `path` (the caller renames)."""
    qtype = FLOAT_TYPES[quant]
    vocab = read_vocab(ckpt.path, ckpt.spec.text.vocab_size)
    writer = gguf.GGUFWriter(str(path), "glm4", use_temp_file=False)
    try:
        write_metadata(writer, ckpt, vocab, quant, converter_version)
        plan = [
            (name, shape, gguf.GGMLQuantizationType.F32 if len(shape) == 1 else qtype,
             lambda load=load: (_encode(block, qtype) for block in load()))
            for name, load, shape in iter_tensors(ckpt, quant)
        ]
        write_streamed(writer, plan, progress.update if progress is not None else None)
    finally:
        writer.close()


def describe_vocab(ckpt_path: Path) -> dict:
    """Token ids the runtime needs, read from the checkpoint's tokenizer (for the bundle manifest)."""
    tok = json.loads((Path(ckpt_path) / "tokenizer.json").read_text(encoding="utf-8"))
    return {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
