"""`glm-edge make-reference` and `glm-edge convert` from the command line: results, one-line errors, exit codes."""

from __future__ import annotations

import json

import pytest

from edge.bundle import load_bundle
from edge.cli import main


def test_make_reference_then_convert(tmp_path, capsys):
    assert main(["make-reference", str(tmp_path / "ref"), "--size", "tiny", "--quiet"]) == 0
    assert (tmp_path / "ref" / "config.json").is_file()
    assert main(["convert", str(tmp_path / "ref"), str(tmp_path / "bundle"), "--quant", "q8_0",
                 "--vision", "int8", "--projector-quant", "Q8_0", "--quiet"]) == 0
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest["decoder"]["quant"] == "Q8_0" and bundle.vision_variants == ["int8"]


@pytest.mark.parametrize("args, message", [
    (["convert", "{missing}", "{out}"], "not a folder"),
    (["convert", "{ckpt}", "{out}", "--quant", "Q3_XL"], "unknown quant type 'Q3_XL'; allowed: F32, F16, BF16"),
    (["convert", "{ckpt}", "{out}", "--vision", "int4"], "unknown vision dtype 'int4'"),
    (["convert", "{ckpt}", "{out}", "--projector-quant", "Q4_0"], "unknown projector type 'Q4_0'"),
    (["make-reference", "{ckpt}"], "already exists"),
])
def test_errors_are_one_line_with_exit_2(args, message, tiny_checkpoint, tmp_path, capsys):
    fill = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "out"), "ckpt": str(tiny_checkpoint)}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glm-edge: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_corrupt_config_names_the_file(tiny_checkpoint, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "config.json").write_text("{ not json")
    assert main(["convert", str(ckpt), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "config.json: not valid JSON" in err
    json.loads((tiny_checkpoint / "config.json").read_text())  # the original is untouched


def test_mmproj_flag_adds_listed_verified_files(tiny_checkpoint, tmp_path):
    assert main(["convert", str(tiny_checkpoint), str(tmp_path / "b"), "--quant", "F16", "--mmproj", "--quiet"]) == 0
    bundle = load_bundle(tmp_path / "b", verify="full")
    assert [(m["path"], m["quant"]) for m in bundle.manifest["mmproj"]] == [("mmproj-F16.gguf", "F16")]
    assert main(["convert", str(tiny_checkpoint), str(tmp_path / "c"), "--quant", "F16", "--quiet"]) == 0
    assert load_bundle(tmp_path / "c").manifest["mmproj"] == []
    assert main(["convert", str(tiny_checkpoint), str(tmp_path / "d"), "--mmproj", "Q4_0", "--quiet"]) == 2
