"""Export the GLM-4.6V vision transformer to ONNX, built node by node from numpy weights (no torch).

`export_vision(ckpt, out_dir, dtype)` writes `vision-encoder-<dtype>.onnx` (plus `.onnx.data` when the
weights pass 256 MB) and returns the written paths. The graph computes, for one image of N patches:

    patch embed (Conv3d as MatMul) -> RMSNorm -> + pos_interp @ position_table
    -> depth x [x += proj(attn(RMSNorm x)), non-causal, 2-D RoPE; x += down(silu(gate) * up)(RMSNorm x)]
    -> post_layernorm RMSNorm  ->  vision_hidden [N, hidden]

Inputs/outputs and the metadata that makes the file self-describing are defined by `edge/vision/encoder.py`
(`io_description`, `VisionMeta`); `describe_io(spec, dtype)` gives the manifest entry. Opset 17, IR 8.
Standard ONNX ops throughout (onnxruntime fuses the RMSNorm, SiLU and MatMul+Add patterns itself) except
attention: com.microsoft MultiHeadAttention by default, measured to pay off on CPU (see ATTENTION);
`attention="standard"` gives an all-standard graph. com.microsoft RotaryEmbedding measured within noise
(<= 3%) and is not used.

dtypes: `fp32`; `fp16` (fp16 weights and matmul/attention; residual stream, norms, inputs and output
stay fp32 with Casts at the boundaries, so large activations cannot overflow); `int8` (the weight MatMuls as
onnxruntime's `quantize_dynamic` writes them: int8 weights with one symmetric scale per output channel,
DynamicQuantizeLinear of the input, MatMulInteger; the patch embedding and the position-table product stay
fp32). Weights stream to the `.onnx.data` file as they are made, so memory holds one weight at a time (the
file is folded back into a single `.onnx` when small enough). Files appear only when complete (temp dir +
rename).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convert.checkpoint import Checkpoint, VisionSpec
from edge.errors import ConversionError
from edge.vision.encoder import INPUT_NAMES, OUTPUT_NAME, PATCH_DIM, VisionMeta, io_description

DTYPES = ("fp32", "fp16", "int8")
OPSET = 17
IR_VERSION = 8
# Weights over this many bytes stay in `<file>.data` beside the graph; below it they are folded into one `.onnx`.
# Folding holds them in memory about three times over (proto, serialization, write), so the bound is well under
# protobuf's own 2 GiB limit: the real tower's fp32 (2.7 GB), fp16 and int8 files all keep their data file.
EXTERNAL_DATA_THRESHOLD = 256 << 20
INLINE_BYTES = 1024  # smaller initializers (shapes, scalars) stay inside the graph, as onnx's size_threshold
_FP32_ONLY = ("patch_embed",)  # linears kept float in int8 graphs (the position-table product is no linear)
# Attention implementations. `mha` (com.microsoft MultiHeadAttention, onnxruntime CPU/CUDA/ROCm/DirectML)
# measured on 2 CPU threads at real widths (hidden 1536, 12 heads), per layer: N=1024 ~5% faster than
# `standard`; N=8192 2.4x faster and peak memory 1.8 GB instead of 4.5 GB (standard ops materialize
# [heads, N, N] scores, quadratic in N). `standard` keeps the graph plain for providers without it.
ATTENTION = ("mha", "standard")


def visual_prefix(ckpt: Checkpoint) -> str:
    """`model.visual.` (transformers 5) or `visual.` (older checkpoints)."""
    for prefix in ("model.visual.", "visual."):
        if ckpt.has(prefix + "patch_embed.proj.weight"):
            return prefix
    raise ConversionError(f"{ckpt.path}: no vision tower (neither model.visual.* nor visual.* tensors)")


def vision_meta(spec: VisionSpec, dtype: str) -> VisionMeta:
    return VisionMeta(
        hidden_size=spec.hidden_size,
        num_heads=spec.num_heads,
        head_dim=spec.head_dim,
        in_features=spec.in_channels * spec.temporal_patch_size * spec.patch_size**2,
        pos_grid=spec.image_size // spec.patch_size,
        spatial_merge_size=spec.spatial_merge_size,
        rope_theta=spec.rope_theta,
        dtype=dtype,
    )


def describe_io(spec: VisionSpec, dtype: str = "fp32") -> dict:
    """Manifest description of the encoder's inputs/outputs (names, dtypes, symbolic shapes)."""
    return io_description(vision_meta(spec, dtype))


class _Graph:
    """Accumulates nodes and initializers; every helper returns the name of its output.

    With `data_file`, every initializer of INLINE_BYTES or more is appended to that file as it is made and
    the graph keeps only a reference (ONNX external data), so building the real 24-block tower holds one
    weight at a time in memory instead of all 2.7 GB of them (and protobuf's copies of them)."""

    def __init__(self, weight_dtype: type, data_file: Path | None = None, int8: bool = False):
        self.int8 = int8
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.wdt = weight_dtype
        self.fp16 = weight_dtype == np.float16
        self._n = 0
        self._data = open(data_file, "wb") if data_file is not None else None
        self._location = data_file.name if data_file is not None else None

    def init(self, name: str, array: np.ndarray, dtype=None) -> str:
        data = np.ascontiguousarray(array, dtype=dtype or self.wdt)
        if data.dtype == np.float16 and not np.isfinite(data).all():
            raise ConversionError(f"weight {name} overflows float16 (max |w| {np.abs(array).max():.3g}); use fp32")
        if self._data is None or data.nbytes < INLINE_BYTES:
            self.inits.append(numpy_helper.from_array(data, name))
            return name
        self._data.write(b"\0" * (-self._data.tell() % 64))  # aligned, as onnx's own external-data writer does
        offset = self._data.tell()
        data.tofile(self._data)
        tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(data.dtype),
                                  dims=data.shape, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self._location), ("offset", str(offset)), ("length", str(data.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.inits.append(tensor)
        return name

    def close(self) -> None:
        if self._data is not None:
            self._data.close()

    def scalar(self, name: str, value: float, dtype=np.float32) -> str:
        return self.init(name, np.array(value), dtype)

    def op(self, op_type: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs):
        self._n += 1
        name = name or f"{op_type.lower()}_{self._n}"
        outs = [name if n_out == 1 else f"{name}:{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def cast(self, x: str, to_fp16: bool) -> str:
        if not self.fp16:
            return x
        return self.op("Cast", [x], to=TensorProto.FLOAT16 if to_fp16 else TensorProto.FLOAT)

    def linear(self, x: str, weight: np.ndarray, name: str, bias: np.ndarray | None = None) -> str:
        """x @ weight.T (+ bias); weight is [out, in] as in the checkpoint. int8 graphs quantize it (but not
        the patch embedding, kept float for accuracy)."""
        if self.int8 and name not in _FP32_ONLY:
            y = self._int8_matmul(x, weight.T, name)
        else:
            y = self.op("MatMul", [x, self.init(name + ".weight", weight.T)], name=name + ".matmul")
        if bias is not None:
            y = self.op("Add", [y, self.init(name + ".bias", bias)], name=name + ".add")
        return y

    def _int8_matmul(self, x: str, w: np.ndarray, name: str) -> str:
        """x @ w with w [in, out] as int8, one symmetric scale per output column, and x quantized per call to
        uint8: the nodes onnxruntime's `quantize_dynamic` writes (QInt8, per_channel, symmetric weights), built
        here one weight at a time instead of loading the whole fp32 graph into its quantizer."""
        absmax = np.abs(w).max(axis=0)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        xq, xs, xz = self.op("DynamicQuantizeLinear", [x], name=name + ".quantize_input", n_out=3)
        wq = self.init(name + ".weight_quantized", q, np.int8)
        wz = self.init(name + ".weight_zero_point", np.zeros(q.shape[1], np.int8), np.int8)
        acc = self.op("MatMulInteger", [xq, wq, xz, wz], name=name + ".matmul_integer")
        scales = self.op("Mul", [xs, self.init(name + ".weight_scale", scale, np.float32)], name=name + ".scales")
        return self.op("Mul", [self.op("Cast", [acc], to=TensorProto.FLOAT), scales], name=name + ".matmul")

    def rms_norm(self, x: str, weight: np.ndarray, eps: float, name: str) -> str:
        """fp32 RMSNorm in the Pow/ReduceMean/Add/Sqrt/Div/Mul form onnxruntime fuses."""
        sq = self.op("Pow", [x, self.scalar(name + ".two", 2.0)], name=name + ".pow")
        var = self.op("ReduceMean", [sq], name=name + ".mean", axes=[-1], keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.scalar(name + ".eps", eps)], name=name + ".add_eps")])
        y = self.op("Div", [x, std], name=name + ".div")
        return self.op("Mul", [y, self.init(name + ".weight", weight, np.float32)], name=name + ".scale")


def _attention(g: _Graph, x: str, p: str, ckpt: Checkpoint, spec: VisionSpec, i: int, shapes: dict, kind: str) -> str:
    """Non-causal multi-head attention with 2-D rotate-half RoPE on x (compute dtype) -> [N, hidden]."""
    hd, d = spec.hidden_size, spec.head_dim
    w = ckpt.get(p + "attn.qkv.weight", (3 * hd, hd)).copy()
    b = ckpt.get(p + "attn.qkv.bias", (3 * hd,)).copy() if spec.attention_bias else None
    scale = d**-0.5  # folded into the q rows: rope is linear, so (s*q)·k == s*(q·k)
    w[:hd] *= scale
    if b is not None:
        b[:hd] *= scale
    qkv = g.linear(x, w, f"blk{i}.attn.qkv", b)
    q, k, v = g.op("Split", [qkv], name=f"blk{i}.attn.split", n_out=3, axis=-1)

    def rope(t: str, tag: str) -> str:  # [N, hidden] -> rotated [N, heads, d]
        t = g.op("Reshape", [t, shapes["heads"]], name=f"blk{i}.attn.{tag}_heads")
        lo, hi = g.op("Split", [t], name=f"blk{i}.attn.{tag}_halves", n_out=2, axis=-1)
        rot = g.op("Concat", [g.op("Neg", [hi]), lo], axis=-1)
        a = g.op("Mul", [t, shapes["cos"]])
        return g.op("Add", [a, g.op("Mul", [rot, shapes["sin"]])], name=f"blk{i}.attn.{tag}_rope")

    if kind == "mha":  # com.microsoft MultiHeadAttention: [1, N, hidden] in and out, O(N) memory on CPU
        seq = [g.op("Reshape", [t, shapes["seq"]]) for t in (rope(q, "q"), rope(k, "k"), v)]
        ctx = g.op("MultiHeadAttention", seq, name=f"blk{i}.attn.mha", domain="com.microsoft",
                   num_heads=spec.num_heads, scale=1.0)
        ctx = g.op("Reshape", [ctx, shapes["flat"]])
    else:  # standard ops: materializes [heads, N, N] scores
        q = g.op("Transpose", [rope(q, "q")], perm=[1, 0, 2])
        kt = g.op("Transpose", [rope(k, "k")], perm=[1, 2, 0])
        v = g.op("Transpose", [g.op("Reshape", [v, shapes["heads"]])], perm=[1, 0, 2])
        probs = g.op("Softmax", [g.op("MatMul", [q, kt], name=f"blk{i}.attn.scores")], axis=-1)
        ctx = g.op("MatMul", [probs, v], name=f"blk{i}.attn.context")
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[1, 0, 2]), shapes["flat"]])
    return g.linear(ctx, ckpt.get(p + "attn.proj.weight", (hd, hd)), f"blk{i}.attn.proj")


def build_vision_model(ckpt: Checkpoint, dtype: str = "fp32", attention: str = "mha",
                       data_file: Path | None = None) -> onnx.ModelProto:
    """The vision tower as a ModelProto (`dtype` fp32, fp16 or int8).

    attention: `mha` (com.microsoft MultiHeadAttention; default, see ATTENTION) or `standard` (plain ops).
    data_file: where the weights go as they are made (external data; see _Graph); None keeps them in the proto.
    """
    if dtype not in DTYPES:
        raise ConversionError(f"vision dtype {dtype!r} is not one of {list(DTYPES)}")
    if attention not in ATTENTION:
        raise ConversionError(f"attention {attention!r} is not one of {list(ATTENTION)}")
    spec, p = ckpt.spec.vision, visual_prefix(ckpt)
    meta = vision_meta(spec, dtype)
    if spec.hidden_size % spec.num_heads:
        raise ConversionError(f"vision hidden_size {spec.hidden_size} is not a multiple of num_heads {spec.num_heads}")
    g = _Graph(np.float16 if dtype == "fp16" else np.float32, data_file, int8=dtype == "int8")
    try:
        return _build(ckpt, dtype, attention, spec, p, meta, g)
    finally:
        g.close()


def _build(ckpt: Checkpoint, dtype: str, attention: str, spec: VisionSpec, p: str, meta: VisionMeta,
           g: _Graph) -> onnx.ModelProto:
    hd, eps, npos = spec.hidden_size, spec.rms_norm_eps, meta.pos_grid**2
    i64 = lambda name, v: g.init(name, np.array(v), np.int64)  # noqa: E731
    shapes = {
        "heads": i64("shape.heads", [0, spec.num_heads, spec.head_dim]),
        "flat": i64("shape.flat", [-1, hd]),
        "seq": i64("shape.seq", [1, -1, hd]),
    }
    axis1 = i64("axes.1", [1])  # cos/sin [N, d] -> [N, 1, d], broadcast over heads
    shapes["cos"] = g.op("Unsqueeze", [g.cast(INPUT_NAMES[2], True), axis1], name="rope.cos")
    shapes["sin"] = g.op("Unsqueeze", [g.cast(INPUT_NAMES[3], True), axis1], name="rope.sin")

    w = ckpt.get(p + "patch_embed.proj.weight").reshape(hd, -1)
    if w.shape[1] != meta.in_features:
        raise ConversionError(f"patch_embed.proj.weight has {w.shape[1]} inputs, config says {meta.in_features}")
    x = g.linear(g.cast(INPUT_NAMES[0], True), w, "patch_embed", ckpt.get(p + "patch_embed.proj.bias", (hd,)))
    x = g.rms_norm(g.cast(x, False), ckpt.get(p + "post_conv_layernorm.weight", (hd,)), eps, "post_conv_norm")
    table = ckpt.get(p + "embeddings.position_embedding.weight", (npos, hd))
    pos = g.op("MatMul", [g.cast(INPUT_NAMES[1], True), g.init("pos_embed.table", table)], name="pos_embed.matmul")
    x = g.op("Add", [x, g.cast(pos, False)], name="embed")

    mlp = spec.out_hidden_size  # the block MLP width is out_hidden_size, not intermediate_size
    for i in range(spec.depth):
        b = f"{p}blocks.{i}."
        h = g.cast(g.rms_norm(x, ckpt.get(b + "norm1.weight", (hd,)), eps, f"blk{i}.norm1"), True)
        attn = _attention(g, h, b, ckpt, spec, i, shapes, attention)
        x = g.op("Add", [x, g.cast(attn, False)], name=f"blk{i}.attn.residual")
        h = g.cast(g.rms_norm(x, ckpt.get(b + "norm2.weight", (hd,)), eps, f"blk{i}.norm2"), True)
        gate_up = np.concatenate([ckpt.get(b + f"mlp.{n}_proj.weight", (mlp, hd)) for n in ("gate", "up")])
        gate_up = g.linear(h, gate_up, f"blk{i}.mlp.gate_up")  # one GEMM, then split in halves
        gate, up = g.op("Split", [gate_up], name=f"blk{i}.mlp.split", n_out=2, axis=-1)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])], name=f"blk{i}.mlp.silu"), up])
        down = g.linear(act, ckpt.get(b + "mlp.down_proj.weight", (hd, mlp)), f"blk{i}.mlp.down")
        x = g.op("Add", [x, g.cast(down, False)], name=f"blk{i}.mlp.residual")
    y = g.rms_norm(x, ckpt.get(p + "post_layernorm.weight", (hd,)), eps, "post_layernorm")
    g.nodes.append(helper.make_node("Identity", [y], [OUTPUT_NAME], name="output"))

    desc = io_description(meta)
    value_info = lambda a: helper.make_tensor_value_info(a["name"], TensorProto.FLOAT, a["shape"])  # noqa: E731
    graph = helper.make_graph(
        g.nodes, "glm_edge_vision", [value_info(a) for a in desc["inputs"]],
        [value_info(a) for a in desc["outputs"]], g.inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if attention == "mha":
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(
        graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="glm-edge",
        doc_string=f"GLM-4.6V vision tower ({dtype}, {attention} attention); one image per call, dynamic {PATCH_DIM}",
    )
    helper.set_model_props(model, meta.to_props())
    return model


def _save_streamed(model: onnx.ModelProto, path: Path, data: Path) -> list[Path]:
    """Save a graph whose weights were streamed to `data`: as one file when they are small enough for
    protobuf (read back in), else the graph beside its external data file."""
    if data.stat().st_size <= EXTERNAL_DATA_THRESHOLD:
        onnx.load_external_data_for_model(model, str(data.parent))
        data.unlink()
        onnx.save_model(model, path)
        return [path]
    onnx.save_model(model, path)
    return [path, data]


def export_vision(ckpt: Checkpoint, out_dir: str | Path, dtype: str = "fp32", attention: str = "mha") -> list[Path]:
    """Write `vision-encoder-<dtype>.onnx` (+ `.data`) into out_dir; returns the final paths."""
    if dtype not in DTYPES:
        raise ConversionError(f"vision dtype {dtype!r} is not one of {list(DTYPES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"vision-encoder-{dtype}.onnx"
    tmp = Path(tempfile.mkdtemp(prefix=".vision-", dir=out_dir))
    try:
        graph = tmp / name
        data = graph.with_name(graph.name + ".data")
        model = build_vision_model(ckpt, dtype, attention, data_file=data)
        files = _save_streamed(model, graph, data)
        del model
        onnx.checker.check_model(str(files[0]))
        final = []
        for f in sorted(files, key=lambda f: f.suffix == ".onnx"):  # data file first, graph last
            target = out_dir / f.name
            f.replace(target)
            final.append(target)
        return sorted(final, key=lambda f: f.suffix != ".onnx")
    except OSError as e:
        raise ConversionError(f"writing {out_dir / name} failed: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
