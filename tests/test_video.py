"""Video input (edge/vision/video*.py, resample.py) against transformers, on clips written here with PyAV.

transformers' video processor module imports torchvision at module level, which cannot be installed beside
the CPU torch here; `hf_video_module` loads that module's file with an empty stand-in for the torchvision
import, which reaches its plain-Python pieces (sample_frames, smart_resize, patchify, class defaults). The pixel
reference is built from those pieces plus what torchvision's `resize` runs on CPU for a uint8 tensor:
`torch.nn.functional.interpolate(uint8, mode="bicubic", antialias=True, align_corners=False)` (torchvision's
`_do_native_uint8_resize_on_cpu` is true for bicubic, so the uint8 tensor goes in as is), then transformers'
fused rescale+normalize. Measured here: largest difference 0 LSB (bit-identical) on every clip.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import types
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from benchmarks.video_clips import clip_bytes
from edge.errors import (
    InputError, NotAVideoError, NoVideoFpsError, NoVideoFramesError, TruncatedVideoError, VideoError,
    VideoTokenBudgetError, VideoTooLargeError,
)
from edge.vision.resample import resize_bicubic_aa
from edge.vision.video import VideoLimits, _needed_packets, _scan, decode_frames, open_video, probe
from edge.vision.video_preprocess import VideoConfig, plan_size, prepare_video, smart_resize
from edge.vision.video_sampling import SamplingOptions, sample_frames

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]

CLIPS = {  # name: (width, height, fps, seconds, container)
    "100x70-2s-10fps": (100, 70, 10, 2, "mp4"),
    "150x90-7s-25fps": (150, 90, 25, 7, "mp4"),
    "100x70-45s-2fps": (100, 70, 2, 45, "mp4"),
    "150x90-odd-12fps": (150, 90, 12, 2.5, "mp4"),  # 30 frames -> 15 sampled, padded to 16 (last repeated)
    "150x90-7s-25fps-mkv": (150, 90, 25, 7, "matroska"),  # Matroska: no frame count in the header
}
MP4_CLIPS = [k for k, v in CLIPS.items() if v[4] == "mp4"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for name, (w, h, fps, secs, container) in CLIPS.items():
        out[name] = folder / f"{name}.{'mkv' if container == 'matroska' else 'mp4'}"
        out[name].write_bytes(clip_bytes(w, h, fps, secs, container=container, seed=len(out)))
    return out


@pytest.fixture(scope="module")
def hf_video_module():
    """transformers.models.glm46v.video_processing_glm46v, loaded with a stand-in for torchvision."""
    import transformers.models.glm46v as pkg
    import transformers.video_processing_utils  # noqa: F401  (imported first, with torchvision really absent)

    name = "transformers.models.glm46v.video_processing_glm46v"
    stubs = ("torchvision", "torchvision.transforms", "torchvision.transforms.v2",
             "torchvision.transforms.v2.functional")
    saved = {n: sys.modules.get(n) for n in (*stubs, name)}
    for n in stubs:
        sys.modules[n] = types.ModuleType(n)
    sys.modules["torchvision.transforms.v2"].functional = sys.modules["torchvision.transforms.v2.functional"]
    try:
        spec = importlib.util.spec_from_file_location(name, Path(pkg.__path__[0]) / "video_processing_glm46v.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # auto_docstring looks the class's module up
        spec.loader.exec_module(module)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return module


def hf_sample(module, total: int, fps: float, duration: float | None) -> list[int]:
    from transformers.video_utils import VideoMetadata

    meta = VideoMetadata(total_num_frames=total, fps=fps, duration=duration)
    return module.Glm46VVideoProcessor.sample_frames(SimpleNamespace(temporal_patch_size=2), meta).tolist()


def hf_load(module, path: Path):
    """transformers' PyAV loader with transformers' sampler: (uint8 frames [T,H,W,3], VideoMetadata)."""
    from transformers.video_utils import read_video_pyav

    sampler = SimpleNamespace(temporal_patch_size=2)
    return read_video_pyav(str(path),
                           lambda metadata, **kw: module.Glm46VVideoProcessor.sample_frames(sampler, metadata))


def hf_pixels(module, frames: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The torchvision-free reference: transformers' smart_resize / fused normalize / patchify, torch's resize."""
    cls = module.Glm46VVideoProcessor
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # [T, C, H, W] uint8, as the processor holds it
    h, w = module.smart_resize(num_frames=t.shape[0], height=t.shape[2], width=t.shape[3],
                               temporal_factor=cls.temporal_patch_size, factor=cls.patch_size * cls.merge_size,
                               min_pixels=cls.size["shortest_edge"], max_pixels=cls.size["longest_edge"])
    resized = torch.nn.functional.interpolate(t, size=[h, w], mode="bicubic", align_corners=False, antialias=True)
    assert resized.dtype == torch.uint8
    mean = torch.tensor(cls.image_mean) * (1.0 / cls.rescale_factor)
    std = torch.tensor(cls.image_std) * (1.0 / cls.rescale_factor)
    x = (resized.to(torch.float32) - mean[:, None, None]) / std[:, None, None]
    patches, gt, gh, gw = cls.patchify(None, x[None], cls.patch_size, cls.merge_size, cls.temporal_patch_size)
    return patches[0].numpy(), [gt, gh, gw]


# --- sampling ------------------------------------------------------------------------------------

SAMPLING_TABLE = [  # (frames, fps, duration): transformers' PyAV duration is frames / fps; None = no duration
    (20, 10.0, 2.0), (175, 25.0, 7.0), (90, 2.0, 45.0), (30, 12.0, 2.5), (1, 30.0, 1 / 30), (2, 5.0, 0.4),
    (15, 10.0, 1.5), (900, 30.0, 30.0), (901, 30.0, 901 / 30), (9000, 30.0, 300.0), (9030, 30.0, 301.0),
    (72000, 30.0, 2400.0), (90000, 30.0, 3000.0), (300, 29.97, 300 / 29.97), (1439, 23.976, 1439 / 23.976),
    (10, 1.0, 10.0), (61, 1.0, 61.0), (5, 0.5, 10.0), (250, 25.0, None), (250, 25.0, 0.0), (3, 24.0, 0.125),
    (1201, 60.0, 1201 / 60), (45, 3.0, 15.0), (7, 7.0, 1.0), (100, 100.0, 1.0), (600, 0.2, 3000.0),
]


@pytest.mark.parametrize("frames,fps,duration", SAMPLING_TABLE)
def test_sample_frames_equal_transformers(frames, fps, duration, hf_video_module):
    ref = hf_sample(hf_video_module, frames, fps, duration)
    if not ref:  # transformers returns no frame; we refuse with a message instead
        with pytest.raises(NoVideoFramesError, match="keeps no frame"):
            sample_frames(frames, fps, duration)
        return
    assert sample_frames(frames, fps, duration) == ref


@pytest.mark.parametrize("name", MP4_CLIPS)
def test_clip_metadata_indices_and_frames_equal_transformers_loader(name, clips, hf_video_module):
    hf_frames, hf_meta = hf_load(hf_video_module, clips[name])
    src = open_video(clips[name])
    meta = probe(src)
    assert (meta.total_frames, meta.fps, meta.duration) == (hf_meta.total_num_frames, hf_meta.fps, hf_meta.duration)
    assert meta.frames_from_header
    indices = sample_frames(meta.total_frames, meta.fps, meta.duration)
    assert indices == list(hf_meta.frames_indices)
    ours = dict(decode_frames(src, indices, meta))
    distinct = sorted(set(indices))
    assert list(ours) == distinct
    for k, i in enumerate(distinct):  # transformers' loader keeps one frame per distinct index, in order
        np.testing.assert_array_equal(ours[i], hf_frames[k])


def test_odd_sample_count_is_padded(clips):
    v = prepare_video(clips["150x90-odd-12fps"])
    assert v.frame_indices[-1] == v.frame_indices[-2] and len(set(v.frame_indices)) % 2 == 1
    assert v.groups[-1].frame_indices[0] == v.groups[-1].frame_indices[1]


def test_matroska_without_frame_count_counts_packets(clips):
    mkv = probe(open_video(clips["150x90-7s-25fps-mkv"]))
    mp4 = probe(open_video(clips["150x90-7s-25fps"]))
    with av.open(str(clips["150x90-7s-25fps-mkv"])) as c:
        assert c.streams.video[0].frames == 0  # what transformers' loader would read
    assert not mkv.frames_from_header and (mkv.total_frames, mkv.fps, mkv.duration) == (175, 25.0, 7.0)
    assert (mp4.total_frames, mp4.fps, mp4.duration) == (175, 25.0, 7.0)
    a, b = prepare_video(clips["150x90-7s-25fps-mkv"]), prepare_video(clips["150x90-7s-25fps"])
    assert a.frame_indices == b.frame_indices and a.video_grid_thw == b.video_grid_thw


def test_decoding_skips_gops_and_matches_sequential_decoding():
    """A 60 s clip sampled at 8 frames: only the GOPs holding them are fed, and the frames equal a full decode."""
    data = clip_bytes(48, 32, 25, 60, gop=25, bframes=2, seed=3)
    src = open_video(data)
    meta = probe(src)
    indices = sample_frames(meta.total_frames, meta.fps, meta.duration, options=SamplingOptions(max_frames=8))
    assert len(indices) == 8
    with src.open() as c:
        scan = _scan(c, c.streams.video[0], 10**6)
        order = sorted(scan.pts)
    fed = _needed_packets(scan, {order[i] for i in indices})
    assert sum(fed) <= 0.3 * len(fed), f"fed {sum(fed)} of {len(fed)} packets"
    with src.open() as c:
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for i, rgb in decode_frames(src, indices, meta):
        np.testing.assert_array_equal(rgb, full[i])


def test_request_knobs():
    data = clip_bytes(150, 90, 25, 7, seed=1)
    default = prepare_video(data)
    capped = prepare_video(data, options=SamplingOptions(max_frames=9))
    slow = prepare_video(data, options=SamplingOptions(fps=2))  # 2 frames/s: one frame pair per second
    assert default.n_frames == 42 and capped.n_frames == 8 and slow.n_frames == 14
    assert np.allclose(np.diff([g.timestamp for g in slow.groups]), 1.0, atol=0.05)
    assert [g.timestamp_text for g in slow.groups][:3] == ["0.0 seconds", "1.0 seconds", "2.0 seconds"]
    budget = prepare_video(data, max_video_tokens=100)
    assert budget.n_tokens <= 100 < default.n_tokens and budget.n_frames == default.n_frames
    assert len({default.cache_key, capped.cache_key, slow.cache_key, budget.cache_key}) == 4
    again = prepare_video(data)
    assert again.cache_key == default.cache_key
    assert [g.cache_key for g in again.groups] == [g.cache_key for g in default.groups]
    assert len({g.cache_key for g in default.groups}) == len(default.groups)


# --- sizes and pixels -----------------------------------------------------------------------------


def test_config_defaults_and_smart_resize_equal_transformers(hf_video_module, tiny_checkpoint):
    cls = hf_video_module.Glm46VVideoProcessor
    cfg = VideoConfig()
    assert (cfg.min_pixels, cfg.max_pixels) == (cls.size["shortest_edge"], cls.size["longest_edge"])
    assert (cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size) == (cls.patch_size, cls.temporal_patch_size,
                                                                           cls.merge_size)
    assert list(cfg.image_mean) == list(cls.image_mean) and list(cfg.image_std) == list(cls.image_std)
    assert cfg.rescale_factor == cls.rescale_factor and int(cls.resample) == 3
    assert VideoConfig.from_video_preprocessor_config(None) == cfg
    custom = VideoConfig.from_video_preprocessor_config({"size": {"shortest_edge": 3136, "longest_edge": 200704}})
    assert (custom.min_pixels, custom.max_pixels) == (3136, 200704)
    for frames, h, w in [(2, 70, 100), (12, 70, 100), (42, 90, 150), (90, 70, 100), (640, 1080, 1920), (16, 20, 500),
                         (2, 28, 28), (300, 360, 640), (8, 3000, 40), (640, 2160, 3840), (4, 27, 27)]:
        for lo, hi in [(cfg.min_pixels, cfg.max_pixels), (3136, 200704), (100_000, 1_000_000)]:
            ref = hf_video_module.smart_resize(frames, h, w, temporal_factor=2, factor=28, min_pixels=lo, max_pixels=hi)
            assert smart_resize(frames, h, w, min_pixels=lo, max_pixels=hi) == ref


def test_resize_is_torch_uint8_bicubic_exactly():
    rng = np.random.default_rng(0)
    worst = 0
    for (H, W, h, w) in [(70, 100, 56, 112), (90, 150, 84, 140), (360, 640, 364, 644), (33, 29, 56, 28),
                         (70, 100, 140, 196), (200, 300, 28, 56), (70, 100, 70, 84)]:
        frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        ref = torch.nn.functional.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None], size=[h, w],
                                              mode="bicubic", align_corners=False, antialias=True)
        worst = max(worst, int(np.abs(resize_bicubic_aa(frame, h, w).astype(int)
                                      - ref[0].permute(1, 2, 0).numpy().astype(int)).max()))
    print(f"uint8 resize: largest difference to torch {worst} LSB")
    assert worst == 0


@pytest.mark.parametrize("name", MP4_CLIPS)
def test_pixel_values_equal_reference(name, clips, hf_video_module):
    hf_frames, _ = hf_load(hf_video_module, clips[name])
    indices = list(_.frames_indices)
    # transformers' loader returns one frame per distinct index; the sampled list repeats the last on padding
    frames = np.stack([hf_frames[sorted(set(indices)).index(i)] for i in indices])
    ref, grid = hf_pixels(hf_video_module, frames)
    v = prepare_video(clips[name])
    ours = v.pixel_values_videos()
    assert list(v.video_grid_thw) == grid and ours.shape == ref.shape
    std = np.repeat(np.asarray(VideoConfig().image_std, np.float32), 2 * 14 * 14)
    lsb = float((np.abs(ours - ref) * std * 255).max())
    print(f"{name}: grid {grid}, largest pixel difference {lsb:.3g} LSB")
    assert lsb <= 1.0
    assert np.array_equal(ours, ref)  # measured: bit-identical


def test_prompt_text_equals_processor_expansion(clips, hf_video_module):
    from transformers.models.glm46v.processing_glm46v import Glm46VProcessor
    from transformers.video_utils import VideoMetadata

    stub = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2), image_token="<|image|>")
    stub.replace_frame_token_id = lambda ts, num_image_tokens=1: Glm46VProcessor.replace_frame_token_id(
        stub, ts, num_image_tokens=num_image_tokens)
    for name in ("100x70-2s-10fps", "150x90-odd-12fps", "100x70-45s-2fps"):
        v = prepare_video(clips[name])
        m = v.metadata
        meta = VideoMetadata(total_num_frames=m.total_frames, fps=m.fps, duration=m.duration,
                             frames_indices=list(v.frame_indices))
        inputs = {"video_grid_thw": torch.tensor([list(v.video_grid_thw)]), "video_metadata": [meta]}
        assert v.prompt_text() == Glm46VProcessor.replace_video_token(stub, inputs, 0)
        assert v.groups[1].timestamp_text == f"{v.frame_indices[2] / m.fps:.1f} seconds"


# --- vision tower ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision(tiny_checkpoint, tmp_path_factory):
    from convert.checkpoint import Checkpoint
    from convert.projector_gguf import export_projector
    from convert.vision_onnx import export_vision
    from edge.vision.encoder import VisionEncoder
    from edge.vision.projector import Projector

    ckpt = Checkpoint(tiny_checkpoint)
    out = tmp_path_factory.mktemp("video-vision")
    (onnx_path, *_) = export_vision(ckpt, out, "fp32")
    proj_path = export_projector(ckpt, out, "F32")
    return VisionEncoder(onnx_path, provider="cpu", threads=1), Projector(proj_path)


@pytest.mark.parametrize("name", ["100x70-2s-10fps", "150x90-odd-12fps"])
def test_group_embeddings_equal_get_video_features(name, clips, vision, hf_model):
    from edge.vision.encoder import image_embeddings

    encoder, projector = vision
    v = prepare_video(clips[name])
    with torch.no_grad():
        (ref,) = hf_model.model.get_video_features(torch.from_numpy(v.pixel_values_videos()),
                                                   torch.tensor([list(v.video_grid_thw)])).pooler_output
    ours = np.concatenate([image_embeddings(encoder, projector, g.pixel_patches, g.grid_thw) for g in v.groups])
    ref = ref.numpy()
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"{name}: {len(v.groups)} groups, embeddings max rel {rel:.2e}")
    assert ours.shape == ref.shape and ours.shape[0] == v.n_tokens
    assert rel < 1e-4


# --- bad input -------------------------------------------------------------------------------------


def _remux(data: bytes, path: Path, **options) -> bytes:
    with av.open(io.BytesIO(data)) as src, av.open(str(path), "w", format="mp4", options=options) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = stream
                dst.mux(packet)
    return path.read_bytes()


def _garbage_mkv(n_packets: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        out.start_encoding()
        for i in range(n_packets):
            packet = av.Packet(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i * 100, i * 100, Fraction(1, 1000)
            out.mux(packet)
    return buf.getvalue()


def _audio(container: str) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _no_fps_mkv() -> bytes:
    """MPEG-4 in Matroska without DefaultDuration (variable frame rate): FFmpeg reports no average rate."""
    data = bytearray(clip_bytes(64, 48, 10, 2, container="matroska", codec="mpeg4"))
    k = data.find(b"\x23\xe3\x83")  # the DefaultDuration element id, renamed to an unknown (skipped) one
    data[k:k + 3] = b"\x23\xe3\x84"
    with av.open(io.BytesIO(bytes(data))) as c:
        assert c.streams.video[0].average_rate is None
    return bytes(data)


def test_playlists_cannot_make_ffmpeg_read_other_files(tmp_path):
    """An HLS playlist naming a local file (or a URL) is refused before FFmpeg reads what it names."""
    (tmp_path / "secret.ts").write_bytes(clip_bytes(64, 48, 10, 2, container="mpegts"))
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nfile://{tmp_path}/secret.ts\n#EXT-X-ENDLIST\n"
    (tmp_path / "list.m3u8").write_text(playlist)
    with av.open(str(tmp_path / "list.m3u8")) as c:  # what plain FFmpeg does with it: plays the other file
        assert c.format.name == "hls" and c.streams.video
    for source in (tmp_path / "list.m3u8", playlist.encode()):
        with pytest.raises(NotAVideoError, match="allowed container|FFmpeg can read"):
            prepare_video(source)


def test_bad_inputs(tmp_path):
    from tests.conftest import png_bytes

    mp4 = clip_bytes(100, 70, 10, 2)
    faststart = _remux(mp4, tmp_path / "fs.mp4", movflags="faststart")
    assert faststart[4:8] == b"ftyp" and faststart.find(b"moov") < faststart.find(b"mdat")
    cases = [
        (png_bytes(64, 48), NotAVideoError, "PNG image, not a video"),
        (b"hello, this is text" * 20, NotAVideoError, "not a video container"),
        (_audio("wav"), NotAVideoError, "not a video in an allowed container"),
        (_audio("matroska"), NotAVideoError, "no video stream"),
        (b"", NotAVideoError, "empty"),
        (mp4[: len(mp4) // 2], TruncatedVideoError, "cut short"),  # the moov index at the end is gone
        (faststart[: int(len(faststart) * 0.6)], TruncatedVideoError, "cut short"),  # index kept, frames gone
        (_no_fps_mkv(), NoVideoFpsError, "no frame rate"),
        (_garbage_mkv(20), NoVideoFramesError, "no frame of the mjpeg video stream decodes"),
        (_garbage_mkv(0), TruncatedVideoError, "cut short"),  # a header and no packet: FFmpeg hits EOF probing
        (clip_bytes(64, 48, 10, 0.1), NoVideoFramesError, "keeps no frame"),
    ]
    for data, error, text in cases:
        with pytest.raises(error, match=text) as info:
            prepare_video(data)
        assert 400 <= info.value.http_status < 500
    with pytest.raises(VideoTooLargeError, match="7000 pixels; the limit is 6999") as info:
        probe(open_video(mp4), VideoLimits(max_frame_pixels=6999))  # refused from the header: no decode
    assert info.value.http_status == 413
    with pytest.raises(VideoTooLargeError, match="bytes; the limit is 1000"):
        prepare_video(mp4, limits=VideoLimits(max_bytes=1000))
    (tmp_path / "clip.mp4").write_bytes(mp4)
    with pytest.raises(VideoTooLargeError, match="bytes; the limit is 1000"):
        prepare_video(tmp_path / "clip.mp4", limits=VideoLimits(max_bytes=1000))
    with pytest.raises(VideoTooLargeError, match="20 frames; the limit is 10"):
        prepare_video(mp4, limits=VideoLimits(max_frames=10))
    with pytest.raises(VideoTokenBudgetError, match="frames would fit") as info:
        prepare_video(mp4, max_video_tokens=5)
    assert info.value.frames_that_fit == 10 and info.value.needed == 6 and info.value.http_status == 400
    with pytest.raises(VideoError, match="cannot read video file"):
        prepare_video(tmp_path / "absent.mp4")
    with pytest.raises(InputError, match="local path"):
        prepare_video("https://example.com/a.mp4")
    with pytest.raises(VideoError, match="bytes or a path"):
        prepare_video(12345)
    for bad in (dict(fps=0), dict(fps=float("nan")), dict(fps=True), dict(max_frames=1), dict(max_frames=2.5),
                dict(max_frames=641)):
        with pytest.raises(InputError, match="fps|max_frames"):
            SamplingOptions(**bad)
    for bad in (0, -3, True, 1.5):
        with pytest.raises(InputError, match="max_video_tokens"):
            plan_size(2, 70, 100, VideoConfig(), bad)


def test_fuzzed_clips_never_crash(tmp_path):
    """Mutated clips through prepare_video in a watched worker: only edge.errors rejections, no crash or hang."""
    import json

    proc = subprocess.run([sys.executable, "-m", "benchmarks.video_fuzz", "--cases", "300", "--seed", "7",
                           "--timeout", "30", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    report = json.loads((tmp_path / "results.json").read_text())
    assert proc.returncode == 0, report["findings"]
    assert report["outcomes"]["seed_ok"] == 6
    assert report["outcomes"].get("ok", 0) + report["outcomes"].get("rejected", 0) == 300
    assert report["outcomes"].get("rejected", 0) > 30  # the mutations do reach the error paths
