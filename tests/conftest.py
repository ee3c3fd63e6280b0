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


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint as an exact bundle: F32 decoder, F32 projector, fp32 + fp16 + int8 vision."""
    from convert.bundle_writer import convert_checkpoint

    out = tmp_path_factory.mktemp("bundle") / "tiny-f32"
    return convert_checkpoint(tiny_checkpoint, out, quant="F32", vision_dtypes=("fp32", "fp16", "int8"),
                              projector_quant="F32")


def png_bytes(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """A deterministic noisy gradient image as PNG bytes (content matters to the model)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def serve(tiny_bundle):
    """serve(script, **settings) -> (ThreadServer, engine): a real server whose engine is scripted."""
    from tests.server_helpers import ScriptedEngine, ThreadServer, scripted_app

    started = []

    def start(script, engine=None, **settings):
        engine = engine or ScriptedEngine(script)
        srv = ThreadServer(scripted_app(tiny_bundle, engine, **settings)).__enter__()
        started.append(srv)
        return srv, engine

    yield start
    for srv in started:
        srv.__exit__(None, None, None)


@pytest.fixture(scope="module")
def fuzz_server(tiny_bundle, tmp_path_factory):
    """A real server for schema fuzzing (small limits so generated requests stay cheap)."""
    from edge.api.app import create_app
    from edge.api.service import ServerSettings
    from edge.options import RuntimeOptions
    from tests.server_helpers import EXACT, ThreadServer

    media = tmp_path_factory.mktemp("fuzz-media")
    settings = ServerSettings(bundle=tiny_bundle, media_dir=media, max_images=4, max_body_bytes=1 << 20,
                              runtime=RuntimeOptions(ctx_size=384, batch_size=384, ubatch_size=384, **EXACT))
    with ThreadServer(create_app(settings)) as srv:
        yield srv
