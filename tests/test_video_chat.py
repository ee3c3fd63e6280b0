"""Video in conversations: greedy ids (F32 decoder, fp32 vision) equal transformers' `generate` given the same
pixel_values_videos / video_grid_thw, for a clip alone, a clip plus an image, and a clip in the second turn; the
prompt expansion equals the processor's; a second question about a clip reuses its embeddings and the KV prefix;
the server's video_url part and a video that does not fit the context."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import torch

from benchmarks.video_clips import clip_bytes
from edge.chat.template import ImageRef, VideoRef
from edge.runtime import Runtime
from tests.conftest import png_bytes
from tests.server_helpers import EXACT, MODEL, ThreadServer

N = 24
CLIP = clip_bytes(100, 70, 10, 2, container="mp4", seed=3)  # 2 s at 10 fps: 12 sampled frames, 6 groups
QUESTION = {"type": "text", "text": "What happens in the video?"}


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    rt = Runtime.load(tiny_bundle, device="cpu", vision_dtype="fp32", kv_type="f32", flash_attn="off", ctx_size=4096,
                      batch_size=256, ubatch_size=64, threads=2, parallel=1)
    yield rt
    rt.close()


def hf_video_input(hf_model, hf_tokenizer, messages, videos, images=()):
    """input_ids with `<|video|>` expanded as the processor does, the pixels, grids and mm_token_type_ids."""
    cfg = hf_model.config
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pieces = text.split("<|video|>")
    assert len(pieces) == len(videos) + 1
    text = "".join(p + (videos[i].prompt_text() if i < len(videos) else "") for i, p in enumerate(pieces))
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    expanded, k, types, in_video = [], 0, [], False
    begin_video, end_video = hf_tokenizer.convert_tokens_to_ids(["<|begin_of_video|>", "<|end_of_video|>"])
    for token in ids:
        in_video = (in_video or token == begin_video) and token != end_video
        if token == cfg.image_token_id and not in_video:  # a still image's single placeholder
            expanded += [token] * images[k].n_tokens
            types += [1] * images[k].n_tokens
            k += 1
        else:
            expanded.append(token)
            types.append(2 if in_video and token == cfg.image_token_id else 0)
    inputs = {"input_ids": torch.tensor([expanded]), "mm_token_type_ids": torch.tensor([types])}
    inputs["pixel_values_videos"] = torch.from_numpy(np.concatenate([v.pixel_values_videos() for v in videos]))
    inputs["video_grid_thw"] = torch.tensor([list(v.video_grid_thw) for v in videos])
    if images:
        inputs["pixel_values"] = torch.from_numpy(np.concatenate([im.pixel_patches for im in images]))
        inputs["image_grid_thw"] = torch.tensor([list(im.grid_thw) for im in images])
    return inputs


def hf_generate(hf_model, inputs) -> list[int]:
    with torch.no_grad():
        out = hf_model.generate(**inputs, max_new_tokens=N, do_sample=False, repetition_penalty=1.0)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return new[:-1] if new and new[-1] in set(hf_model.generation_config.eos_token_id) else new


def hf_manual_greedy(hf_model, inputs) -> list[int]:
    """Greedy decoding with transformers' own pieces, for prompts with both images and videos, which
    `generate` cannot take (its placeholder masks count video frames as images: transformers#...): the
    embeddings merged by mm_token_type_ids, positions from `get_rope_index`, one full forward per step."""
    m = hf_model.model
    ids, types = inputs["input_ids"], inputs["mm_token_type_ids"]
    grids = dict(image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs["video_grid_thw"])
    eos = set(hf_model.generation_config.eos_token_id)
    out = []
    with torch.no_grad():
        images = (torch.cat(list(m.get_image_features(inputs["pixel_values"], grids["image_grid_thw"]).pooler_output))
                  if "pixel_values" in inputs else None)
        videos = torch.cat(list(m.get_video_features(inputs["pixel_values_videos"], grids["video_grid_thw"]).pooler_output))
        for _ in range(N):
            embeds = m.get_input_embeddings()(ids).clone()
            if images is not None:
                embeds[types == 1] = images
            embeds[types == 2] = videos
            positions, _ = m.get_rope_index(ids, types, **grids)
            token = int(hf_model(inputs_embeds=embeds, position_ids=positions).logits[0, -1].argmax())
            if token in eos:
                break
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
            types = torch.cat([types, torch.zeros((1, 1), dtype=types.dtype)], 1)
    return out


def hf_messages(messages):
    return [{**m, "content": [{"type": p["type"]} if p["type"] in ("video", "image") else p for p in m["content"]]}
            if isinstance(m["content"], list) else m for m in messages]


def ours(runtime, messages):
    return runtime.chat(messages, temperature=0.0, repetition_penalty=1.0, max_tokens=N)


def test_clip_alone(runtime, hf_model, hf_tokenizer):
    msgs = [{"role": "user", "content": [{"type": "video", "video": CLIP}, QUESTION]}]
    done = ours(runtime, msgs)
    video = runtime.prepare_video(CLIP, VideoRef(CLIP))
    assert done.usage.videos == 1 and done.usage.video_frames == video.n_frames == 12  # 2 s: 6 per second
    assert done.usage.video_tokens == video.n_tokens and done.usage.image_tokens == 0
    inputs = hf_video_input(hf_model, hf_tokenizer, hf_messages(msgs), [video])
    want = hf_generate(hf_model, inputs)
    assert len(want) >= 8 and done.token_ids == want
    assert hf_manual_greedy(hf_model, inputs) == want  # the manual reference agrees with generate


def test_clip_plus_image(runtime, hf_model, hf_tokenizer):
    img = png_bytes(84, 56, seed=9)
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "video", "video": CLIP},
                                         {"type": "text", "text": "Is the picture in the video?"}]}]
    done = ours(runtime, msgs)
    video = runtime.prepare_video(CLIP, VideoRef(CLIP))
    image = runtime.prepare(ImageRef(img))
    want = hf_manual_greedy(hf_model, hf_video_input(hf_model, hf_tokenizer, hf_messages(msgs), [video], [image]))
    assert done.token_ids == want and done.usage.images == 1 and done.usage.videos == 1


def test_clip_in_second_turn_reuses_it(runtime, hf_model, hf_tokenizer):
    first = [{"role": "user", "content": [{"type": "video", "video": CLIP}, QUESTION]}]
    a = ours(runtime, first)
    encoded = runtime.stats.images_encoded
    msgs = first + [{"role": "assistant", "content": a.output.content}, {"role": "user", "content": "And then?"}]
    done = ours(runtime, msgs)
    assert runtime.stats.images_encoded == encoded  # groups came from the KV prefix: no encode, no decode
    assert done.usage.cached_tokens > a.usage.prompt_tokens - 2
    video = runtime.prepare_video(CLIP, VideoRef(CLIP))
    want = hf_generate(hf_model, hf_video_input(hf_model, hf_tokenizer, hf_messages(msgs), [video]))
    assert done.token_ids == want


def test_prompt_expansion_ids_equal_the_processor(runtime, hf_tokenizer):
    prompt = runtime.build_prompt([{"role": "user", "content": [{"type": "video", "video": CLIP, "fps": 4.0}, QUESTION]}])
    video = runtime.prepare_video(CLIP, VideoRef(CLIP, fps=4.0))
    ours_ids = [t for c in prompt.chunks for t in c.reference_ids()]
    text = hf_tokenizer.apply_chat_template(hf_messages([{"role": "user", "content": [{"type": "video"}, QUESTION]}]),
                                            tokenize=False, add_generation_prompt=True)
    want = hf_tokenizer(text.replace("<|video|>", video.prompt_text()), add_special_tokens=False)["input_ids"]
    assert ours_ids == want and video.n_frames == 8  # 4 sampled frames a second for 2 s


def test_video_that_does_not_fit_says_how_many_frames_would(tiny_bundle):
    from edge.errors import VideoTokenBudgetError

    long_clip = clip_bytes(150, 90, 25, 7, container="mp4", seed=4)  # 42 sampled frames, ~400 tokens
    with Runtime.load(tiny_bundle, device="cpu", ctx_size=256, batch_size=256, ubatch_size=256, threads=1,
                      parallel=1) as rt:
        with pytest.raises(VideoTokenBudgetError, match=r"about \d+ frames would fit") as e:
            rt.build_prompt([{"role": "user", "content": [{"type": "video", "video": long_clip}, QUESTION]}])
        fit = e.value.frames_that_fit
        assert 2 <= fit < 42
        prompt = rt.build_prompt([{"role": "user", "content": [{"type": "video", "video": long_clip, "max_frames": fit},
                                                               QUESTION]}])
        assert sum(c.n_tokens for c in prompt.chunks) < rt.decoder.n_ctx


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    from edge.api.app import create_app
    from edge.api.service import ServerSettings
    from edge.options import RuntimeOptions

    media = tmp_path_factory.mktemp("videos")
    (media / "clip.mp4").write_bytes(CLIP)
    settings = ServerSettings(bundle=tiny_bundle, media_dir=media, runtime=RuntimeOptions(ctx_size=4096, parallel=1, **EXACT))
    with ThreadServer(create_app(settings)) as srv:
        yield srv


def ask(server, video: dict):
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": video}, QUESTION]}]}
    return httpx.post(server.base + "/v1/chat/completions", json=body, timeout=120)


def test_server_video_url(server):
    r = ask(server, {"url": "data:video/mp4;base64," + base64.b64encode(CLIP).decode(), "max_frames": 8})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["videos"] == 1 and usage["video_frames"] == 8 and usage["prompt_tokens_details"]["video_tokens"] > 0
    assert ask(server, {"url": "clip.mp4", "max_frames": 8}).json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.parametrize("video, status, code", [
    ({"url": "data:video/mp4;base64," + base64.b64encode(b"not a video at all").decode()}, 400, "invalid_video"),
    ({"url": "data:video/mp4;base64," + base64.b64encode(CLIP[: len(CLIP) // 3]).decode()}, 400, "invalid_video"),
    ({"url": "../clip.mp4"}, 403, "media_access_denied"),
    ({"url": "https://example.com/a.mp4"}, 403, "media_access_denied"),
    ({"url": "clip.mp4", "fps": 0}, 400, "invalid_request_error"),
])
def test_server_bad_videos(server, video, status, code):
    r = ask(server, video)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
