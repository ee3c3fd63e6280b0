"""The reference checkpoints: HF layout, determinism, loadable and generating in transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convert.checkpoint import Checkpoint
from convert.reference import write_reference
from convert.safetensors_writer import to_bf16_bits


def test_deterministic(tmp_path, tiny_checkpoint):
    again = write_reference(tmp_path / "again", size="tiny", seed=0)
    for name in ["config.json", "tokenizer.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]:
        assert (again / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
    other = write_reference(tmp_path / "other", size="tiny", seed=1)
    assert (other / "model-00001-of-00002.safetensors").read_bytes() != (again / "model-00001-of-00002.safetensors").read_bytes()


def test_refuses_existing_folder(tiny_checkpoint):
    with pytest.raises(FileExistsError):
        write_reference(tiny_checkpoint, size="tiny")


def test_layout_matches_transformers_state_dict(tiny_checkpoint, hf_model):
    ckpt = Checkpoint(tiny_checkpoint)
    state = hf_model.state_dict()
    assert set(state) == set(ckpt.tensors)
    for name, value in state.items():
        got = torch.from_numpy(ckpt.get(name))
        assert got.shape == value.shape, name
        assert torch.equal(got, value), name  # bf16 widening in our reader is exact
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2


def test_config_has_real_key_names(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    rope = config["text_config"]["rope_parameters"]
    assert rope["partial_rotary_factor"] == 0.5 and sum(rope["mrope_section"]) * 2 == 32
    tok = json.loads((tiny_checkpoint / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert config["image_token_id"] == specials["<|image|>"]
    assert specials["<|observation|>"] in config["text_config"]["eos_token_id"]
    assert config["text_config"]["vocab_size"] > len(tok["model"]["vocab"]) + len(specials)  # padded like the real one


def test_bf16_rounding_is_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e-3], dtype=np.float32)
    expected = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(to_bf16_bits(x), expected)


def test_chat_template_renders_the_spec_format(hf_tokenizer):
    msgs = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this."}]},
    ]
    on = hf_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert on == "[gMASK]<sop><|system|>\nYou are helpful.<|user|>\n<|begin_of_image|><|image|><|end_of_image|>Describe this.<|assistant|>\n"
    off = hf_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert off.endswith("Describe this./nothink<|assistant|>\n<think></think>\n")
    history = msgs + [
        {"role": "assistant", "content": "A cat.", "reasoning_content": "Looking."},
        {"role": "user", "content": "Color?"},
    ]
    text = hf_tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert "<|assistant|>\n<think></think>\nA cat.<|user|>\nColor?<|assistant|>\n" in text


def test_chat_template_tools_and_tool_results_with_images(hf_tokenizer):
    tools = [{"type": "function", "function": {"name": "zoom", "parameters": {"type": "object", "properties": {"factor": {"type": "number"}}}}}]
    msgs = [
        {"role": "user", "content": "Zoom in."},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": {"factor": 2, "mode": "fast"}}}]},
        {"role": "tool", "content": [{"type": "text", "text": "zoomed:"}, {"type": "image"}]},
        {"role": "tool", "content": "second"},
    ]
    text = hf_tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("[gMASK]<sop><|system|>\n# Tools")
    assert '{"type": "function", "function": {"name": "zoom"' in text
    assert "<|assistant|>\n<think></think>\n<tool_call>zoom\n<arg_key>factor</arg_key>\n<arg_value>2</arg_value>\n<arg_key>mode</arg_key>\n<arg_value>fast</arg_value>\n</tool_call>" in text
    assert text.count("<|observation|>") == 1
    assert "<|observation|>\n<tool_response>\nzoomed:<|begin_of_image|><|image|><|end_of_image|>\n</tool_response>\n<tool_response>\nsecond\n</tool_response><|assistant|>\n" in text


def test_greedy_output_depends_on_the_image(hf_model, hf_tokenizer):
    cfg = hf_model.config
    ids = hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
        add_generation_prompt=True, tokenize=True, return_dict=False,
    )
    ids = [t for i in ids for t in ([i] * 6 if i == cfg.image_token_id else [i])]
    input_ids = torch.tensor([ids])
    outs = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        out = hf_model.generate(
            input_ids=input_ids, pixel_values=torch.randn(24, 1176, generator=g),
            image_grid_thw=torch.tensor([[1, 4, 6]]), mm_token_type_ids=(input_ids == cfg.image_token_id).int(),
            max_new_tokens=12, do_sample=False,
        )
        outs.append(out[0, len(ids):].tolist())
    assert outs[0] != outs[1]
    assert len(set(outs[0])) > 3  # not a single repeated token
