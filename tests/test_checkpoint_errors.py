"""Issue #2, the decoder converter's failure modes: bad checkpoints, bad arguments, full disks.

Every case copies the tiny checkpoint into tmp_path before breaking it, and checks that the conversion raises
the documented error class with a message naming what was wrong, and that the output folder is left exactly
as it was: no `decoder-*.gguf`, no `.part` temp file, no BF16 intermediate.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections import namedtuple
from pathlib import Path

import gguf
import pytest

import convert.pipeline as pipeline
from convert.checkpoint import Checkpoint, parse_config
from convert.pipeline import convert_decoder
from edge.errors import CheckpointError, ConversionError

DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.fixture
def ckpt_copy(tiny_checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


@pytest.fixture
def out_dir(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def listing(folder: Path) -> dict[str, bytes]:
    """Every entry of the folder (hidden temp files included) with its content."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def convert(src: Path, out: Path, quant: str = "F16") -> Path:
    return convert_decoder(Checkpoint(src), out, quant)


def edit_config(folder: Path, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=2))


def assert_fails(src: Path, out: Path, error, match: str | None, quant: str = "F16"):
    before = listing(out)
    with pytest.raises(error, match=match) as info:
        convert(src, out, quant)
    assert listing(out) == before
    assert not list(out.glob("*.part")) and not list(out.glob(".*"))
    return info.value


# --------------------------------------------------------------------------------------------- config


def test_missing_config(ckpt_copy, out_dir):
    (ckpt_copy / "config.json").unlink()
    assert_fails(ckpt_copy, out_dir, CheckpointError, r"config\.json: missing")


def test_corrupt_config(ckpt_copy, out_dir):
    (ckpt_copy / "config.json").write_text('{"architectures": ["Glm4vForConditionalGeneration"], ')
    assert_fails(ckpt_copy, out_dir, CheckpointError, r"config\.json: not valid JSON")


def test_moe_config_is_refused_clearly(ckpt_copy, out_dir):
    def moe(c):
        c["architectures"] = ["Glm4vMoeForConditionalGeneration"]
        c["model_type"] = "glm4v_moe"

    edit_config(ckpt_copy, moe)
    err = assert_fails(ckpt_copy, out_dir, CheckpointError, "MoE")
    assert "dense GLM-4.6V-Flash" in str(err) and "Glm4vMoeForConditionalGeneration" in str(err)
    # the model_type alone is enough (older configs name no architecture)
    with pytest.raises(CheckpointError, match="MoE"):
        parse_config({"model_type": "glm4v_moe"})


def test_unrelated_architecture(ckpt_copy, out_dir):
    def llama(c):
        c["architectures"] = ["LlamaForCausalLM"]
        c["model_type"] = "llama"

    edit_config(ckpt_copy, llama)
    err = assert_fails(ckpt_copy, out_dir, CheckpointError, "LlamaForCausalLM")
    assert "not supported" in str(err) and "Glm4vForConditionalGeneration" in str(err)


def test_missing_required_key_is_named(ckpt_copy, out_dir):
    edit_config(ckpt_copy, lambda c: c["text_config"].pop("num_hidden_layers"))
    assert_fails(ckpt_copy, out_dir, CheckpointError, r"text_config\.num_hidden_layers")


def test_inconsistent_mrope_sections(ckpt_copy, out_dir):
    edit_config(ckpt_copy, lambda c: c["text_config"]["rope_parameters"].update(mrope_section=[4, 6, 4]))
    assert_fails(ckpt_copy, out_dir, CheckpointError, r"mrope_section \[4, 6, 4\]")


def test_accepted_config_spellings(tiny_checkpoint):
    """Both top-level spellings and the legacy rope keys parse to the same spec (doc section 1)."""
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    spec = parse_config(config)
    newer = json.loads(json.dumps(config))
    newer["architectures"], newer["model_type"] = ["Glm46VForConditionalGeneration"], "glm46v"
    assert parse_config(newer).text == spec.text
    legacy = json.loads(json.dumps(config))
    rope = legacy["text_config"].pop("rope_parameters")
    legacy["text_config"].update(rope_theta=rope["rope_theta"], partial_rotary_factor=rope["partial_rotary_factor"],
                                 rope_scaling={"type": "default", "mrope_section": rope["mrope_section"]})
    assert parse_config(legacy).text == spec.text


# --------------------------------------------------------------------------------------------- shards


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*.safetensors"))


def test_missing_shard(ckpt_copy, out_dir):
    shard = _shards(ckpt_copy)[1]
    shard.unlink()
    assert_fails(ckpt_copy, out_dir, CheckpointError, f"{shard.name}: shard listed in model.safetensors.index.json is missing")


def test_index_names_a_tensor_in_no_shard(ckpt_copy, out_dir):
    index_path = ckpt_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.language_model.layers.9.mlp.down_proj.weight"] = _shards(ckpt_copy)[0].name
    index_path.write_text(json.dumps(index))
    assert_fails(ckpt_copy, out_dir, CheckpointError, r"layers\.9\.mlp\.down_proj\.weight")


@pytest.mark.parametrize("keep", [0.5, 0.999, 4 / 1e9])
def test_truncated_shard(ckpt_copy, out_dir, keep):
    shard = _shards(ckpt_copy)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: max(4, int(len(data) * keep))])
    assert_fails(ckpt_copy, out_dir, CheckpointError, f"{shard.name}: truncated")


def test_corrupt_shard_header(ckpt_copy, out_dir):
    shard = _shards(ckpt_copy)[0]
    data = bytearray(shard.read_bytes())
    data[8:16] = b"\xff" * 8  # inside the JSON header
    shard.write_bytes(bytes(data))
    assert_fails(ckpt_copy, out_dir, CheckpointError, "corrupt safetensors header")


def test_missing_tokenizer_leaves_nothing(ckpt_copy, out_dir):
    """Raised inside the writer, after the temp file exists: it must be removed."""
    (ckpt_copy / "tokenizer.json").unlink()
    assert_fails(ckpt_copy, out_dir, CheckpointError, r"tokenizer\.json: missing")


# --------------------------------------------------------------------------------------------- shapes


def test_shape_mismatch_names_the_tensor(ckpt_copy, out_dir):
    edit_config(ckpt_copy, lambda c: c["text_config"].update(hidden_size=320))
    err = assert_fails(ckpt_copy, out_dir, CheckpointError, r"model\.language_model\.embed_tokens\.weight")
    assert "[1792, 256]" in str(err) and "[1792, 320]" in str(err)


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_shape_mismatch_mid_file_leaves_nothing(ckpt_copy, out_dir, quant):
    """A mismatch found after several tensors were written (layer 0's MLP): no partial file, float or quant."""
    edit_config(ckpt_copy, lambda c: c["text_config"].update(intermediate_size=512))
    assert_fails(ckpt_copy, out_dir, CheckpointError, r"layers\.0\.mlp\.gate_up_proj\.weight has shape \[1216, 256\], expected \[1024, 256\]", quant)


def test_failure_keeps_a_finished_file(ckpt_copy, out_dir):
    """A failed re-conversion does not touch an earlier, complete file of the same name."""
    good = convert(ckpt_copy, out_dir, "F16")
    assert gguf.GGUFReader(good).fields["general.architecture"].contents() == "glm4"
    edit_config(ckpt_copy, lambda c: c["text_config"].update(intermediate_size=512))
    assert_fails(ckpt_copy, out_dir, CheckpointError, "gate_up_proj", "F16")
    assert [p.name for p in out_dir.iterdir()] == ["decoder-F16.gguf"]


# --------------------------------------------------------------------------------------------- arguments, disk


def test_unknown_quant(ckpt_copy, out_dir):
    err = assert_fails(ckpt_copy, out_dir, ConversionError, "unknown quant type 'Q3_K_XL'", "Q3_K_XL")
    for allowed in ("F32", "F16", "BF16", "Q4_0", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K"):
        assert allowed in str(err)


def test_quant_names_are_case_insensitive(ckpt_copy, out_dir):
    assert convert(ckpt_copy, out_dir, "q8_0").name == "decoder-Q8_0.gguf"


@pytest.mark.parametrize("quant", ["F16", "Q4_K_M"])
def test_not_enough_disk_space(ckpt_copy, out_dir, monkeypatch, quant):
    seen = []

    def little(path):
        seen.append(Path(path))
        return DiskUsage(total=10 << 30, used=(10 << 30) - 4096, free=4096)

    monkeypatch.setattr(pipeline.shutil, "disk_usage", little)
    err = assert_fails(ckpt_copy, out_dir, ConversionError, "not enough disk space", quant)
    assert seen == [out_dir]
    assert "GiB" in str(err) and str(out_dir) in str(err)


def test_disk_space_estimate_covers_the_file(ckpt_copy, out_dir, monkeypatch):
    """The free-space check asks for at least what is then written (F32: 4 bytes a weight)."""
    asked = []
    real = pipeline.check_free_space
    monkeypatch.setattr(pipeline, "check_free_space", lambda folder, needed: (asked.append(needed), real(folder, needed)))
    path = convert(ckpt_copy, out_dir, "F32")
    assert asked and asked[0] >= 0.99 * path.stat().st_size


def _enospc_after(monkeypatch, n_ok: int):
    """GGUFWriter.write_tensor_data writes `n_ok` tensors, then fails as a full disk does."""
    real = gguf.GGUFWriter.write_tensor_data
    calls = []

    def write(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", write)
    return calls


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_disk_full_mid_write(ckpt_copy, out_dir, monkeypatch, quant):
    calls = _enospc_after(monkeypatch, n_ok=5)
    err = assert_fails(ckpt_copy, out_dir, ConversionError, "disk full while writing", quant)
    assert f"decoder-{quant}.gguf" in str(err)
    assert len(calls) == 6  # it really failed part-way, after data had been written
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC


def test_disk_full_in_llama_quantize(ckpt_copy, out_dir, monkeypatch):
    """llama.cpp's quantizer writes the final temp file; a full disk there is reported and cleaned up too."""
    def full(src, dst, quant):
        Path(dst).write_bytes(b"GGUF partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "llama_quantize", full)
    assert_fails(ckpt_copy, out_dir, ConversionError, "disk full", "Q4_K_M")


def test_other_os_errors_propagate_unchanged(ckpt_copy, out_dir, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", broken)
    err = assert_fails(ckpt_copy, out_dir, OSError, "Input/output error")
    assert not isinstance(err, ConversionError) and err.errno == errno.EIO


def test_interrupt_leaves_nothing(ckpt_copy, out_dir, monkeypatch):
    real = gguf.GGUFWriter.write_tensor_data
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", interrupted)
    assert_fails(ckpt_copy, out_dir, KeyboardInterrupt, None, "Q8_0")
