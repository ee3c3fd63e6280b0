"""Shared fixtures: the tiny reference checkpoint and the transformers reference model built from it."""

from __future__ import annotations

import pytest

from convert.reference import write_reference


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A deterministic tiny GLM-4.6V-layout HF checkpoint folder (bf16 safetensors)."""
    return write_reference(tmp_path_factory.mktemp("ckpt") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def hf_model(tiny_checkpoint):
    """transformers' Glm4vForConditionalGeneration on the tiny checkpoint, fp32, eval mode."""
    torch = pytest.importorskip("torch")
    from transformers import Glm4vForConditionalGeneration

    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)
