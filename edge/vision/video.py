"""Video containers with PyAV: metadata as transformers' PyAV loader computes it, and only the sampled frames decoded.

Contract
- `open_video(source, limits)` takes bytes or a filesystem path (the server applies its media allow-list
  first, as for images) and returns a `VideoSource` (the sha256 of the bytes, and how to open them).
- `probe(src, limits)` returns `VideoMetadata` the way `transformers.video_utils.read_video_pyav` does:
  total_frames = the stream header's frame count, fps = the stream's `average_rate`, duration =
  total_frames / fps. Where the header has no count (Matroska, WebM, some streams) the frames are counted by
  demuxing the stream's packets, without decoding them. Checked from the header, before any pixel is
  decoded: a video stream exists, it has a frame rate, and width * height <= `limits.max_frame_pixels`.
- `decode_frames(src, indices, meta, limits)` yields `(index, rgb)` for the sampled indices in increasing order,
  rgb = uint8 [H, W, 3] exactly as transformers' loader converts (`frame.to_ndarray(format="rgb24")`, FFmpeg's
  swscale). Index i is the i-th frame in presentation order, which is the i-th frame FFmpeg's decoder
  outputs when it decodes the stream from the start (transformers' enumeration). Only the GOPs (keyframe to
  next keyframe, in decode order) that hold a sampled frame are fed to the decoder, plus the GOP before a
  frame that precedes its own keyframe in presentation order (open-GOP leading frames); other packets are
  demuxed and dropped: decoding work follows the GOPs that hold sampled frames, not the file length (a
  40-minute file with 2 s GOPs sampled at 640 frames decodes about half of it; with max_frames=32, 3%).
  Equal to decoding from the start for closed GOPs (IDR keyframes, x264's default) and open-GOP leading
  frames; a stream whose frames reference pictures before their GOP's keyframe could differ. Streams whose
  packets lack timestamps, repeat them, or do not start with a keyframe are decoded from the start, counting
  output frames like transformers. The decoder refuses any frame over `limits.max_frame_pixels` (FFmpeg's
  max_pixels), also when the stream changes size after the header.
- Only the demuxers in ALLOWED_FORMATS open, and FFmpeg may open no nested resource (playlists such as HLS
  would otherwise read other local files or URLs named inside the clip).
- Bad input raises edge.errors video classes (4xx) whose message says what was wrong and what is allowed:
  NotAVideoError, TruncatedVideoError, NoVideoFpsError, NoVideoFramesError, VideoTooLargeError.
- Decoding runs in this process. Evidence (benchmarks/video_fuzz.py, PyAV 18.1 / its FFmpeg): 9,400 mutated
  clips (6 container/codec pairs: MP4/MOV/MKV/WebM/AVI with H.264 incl. B-frames, VP9, MPEG-4, MJPEG; bit
  flips, byte and size-field stomps, truncation, zeroed and spliced runs, header/trailer edits) gave no crash,
  no hang (slowest case 0.07 s) and no exception outside edge.errors. The per-request cost is bounded before
  decoding by `VideoLimits` (bytes, header frame size, frame count) and the sampler (at most 640 frames).
- For a path, the sha256 is of the file as read before decoding; a file changed in between is not detected.
No module-level mutable state.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from edge.errors import (
    InputError, NotAVideoError, NoVideoFpsError, NoVideoFramesError, TruncatedVideoError, VideoError,
    VideoTooLargeError,
)

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_FRAME_PIXELS = 3840 * 2160
DEFAULT_MAX_FRAMES = 500_000  # demuxed packet count: ~5.5 h at 25 fps; beyond it the container is refused
_HASH_CHUNK = 1 << 20
# FFmpeg demuxers a request may use (its `format_whitelist`): containers that cannot reference other files or
# URLs. Playlists (hls, concat), image sequences/pipes and everything else are refused before their header is
# read, and no nested protocol may be opened (`protocol_whitelist`), so a clip never makes FFmpeg read a
# second file or fetch a URL. MP4/MOV external data references stay off (FFmpeg's enable_drefs default).
ALLOWED_FORMATS = "mov,matroska,avi,flv,mpegts,mpeg,ogg,asf,ivf,h264,hevc,m4v"
ALLOWED_NAMES = "MP4/MOV, Matroska/WebM, AVI, FLV, MPEG-TS/PS, Ogg, ASF/WMV, IVF, raw H.264/HEVC/MPEG-4"


@dataclass(frozen=True)
class VideoLimits:
    """What a request may send; checked before decoding."""

    max_bytes: int = DEFAULT_MAX_BYTES  # encoded size
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS  # width * height from the stream header
    max_frames: int = DEFAULT_MAX_FRAMES  # frames in the stream (header count or demuxed)


@dataclass(frozen=True)
class VideoMetadata:
    total_frames: int
    fps: float  # the stream's average_rate
    duration: float  # total_frames / fps, as transformers' PyAV loader
    width: int
    height: int
    codec: str
    container: str
    frames_from_header: bool  # False: counted by demuxing packets


@dataclass(frozen=True)
class VideoSource:
    """Encoded video: in memory or a path. `sha256` is of the bytes."""

    sha256: str
    size: int
    data: bytes | None = None
    path: str | None = None

    def head(self, n: int = 64) -> bytes:
        if self.data is not None:
            return self.data[:n]
        with open(self.path, "rb") as f:
            return f.read(n)

    def open(self):
        """The container, demuxers restricted to ALLOWED_FORMATS and no nested protocol (see module contract)."""
        options = {"format_whitelist": ALLOWED_FORMATS, "protocol_whitelist": "file" if self.data is None else "none"}
        try:
            # metadata_errors="replace": tags in other encodings (or corrupt ones) must not fail the open
            return av.open(io.BytesIO(self.data) if self.data is not None else self.path, mode="r", options=options,
                           metadata_errors="replace")
        except av.error.ArgumentError as e:  # the probed demuxer is not on the allow-list
            image = _sniff_image(self.head())
            if image:
                raise NotAVideoError(f"data is a {image} image, not a video; send it as an image") from e
            raise NotAVideoError(f"data is not a video in an allowed container ({ALLOWED_NAMES})") from e
        except av.error.InvalidDataError as e:
            kind = _sniff(self.head())
            if kind is not None:
                raise TruncatedVideoError(f"data starts like {kind} but FFmpeg cannot read its header or index "
                                          f"({e.strerror or e}); the file is cut short or corrupt") from e
            raise NotAVideoError(f"data is not a video container FFmpeg can read ({e.strerror or e}); "
                                 f"allowed: {ALLOWED_NAMES}") from e
        except av.error.FFmpegError as e:
            raise TruncatedVideoError(f"video container cannot be opened ({type(e).__name__}: {e.strerror or e}); "
                                      "the file is cut short or corrupt") from e


def _sniff_image(head: bytes) -> str | None:
    for magic, name in ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP")):
        if head.startswith(magic):
            return name
    return "WebP" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else None


def _sniff(head: bytes) -> str | None:
    """Name of a video container the first bytes announce (to tell a cut file from something else)."""
    if head[4:8] == b"ftyp" or head[4:8] in (b"moov", b"mdat", b"free", b"wide"):
        return "an MP4/MOV file"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "a Matroska/WebM file"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "an AVI file"
    if head.startswith(b"FLV") or head.startswith(b"OggS"):
        return "an FLV/Ogg file"
    return None


def open_video(source: bytes | bytearray | memoryview | str | os.PathLike, limits: VideoLimits = VideoLimits()
               ) -> VideoSource:
    """A `VideoSource` for bytes or a path (read as given: apply the media allow-list before)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > limits.max_bytes:
            raise VideoTooLargeError(f"video is {len(data)} bytes; the limit is {limits.max_bytes}")
        if not data:
            raise NotAVideoError("video data is empty (0 bytes)")
        return VideoSource(sha256=hashlib.sha256(data).hexdigest(), size=len(data), data=data)
    if isinstance(source, str) and "://" in source[:16]:
        raise InputError(f"video source {source[:40]!r}: pass bytes or a local path (URLs are resolved by the server)")
    if not isinstance(source, (str, os.PathLike)):
        raise VideoError(f"video source must be bytes or a path, got {type(source).__name__}")
    path = os.fspath(source)
    digest = hashlib.sha256()
    try:
        size = os.stat(path).st_size
        if size > limits.max_bytes:
            raise VideoTooLargeError(f"video file {path!r} is {size} bytes; the limit is {limits.max_bytes}")
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise VideoError(f"cannot read video file {path!r}: {e.strerror or e}") from e
    if size == 0:
        raise NotAVideoError(f"video file {path!r} is empty (0 bytes)")
    return VideoSource(sha256=digest.hexdigest(), size=size, path=path)


def _video_stream(container, where: str):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise NotAVideoError(f"{where} holds no video stream (streams: {', '.join(kinds)}); send a video file")
    return container.streams.video[0]


def probe(src: VideoSource, limits: VideoLimits = VideoLimits()) -> VideoMetadata:
    """Metadata as transformers' PyAV loader computes it (see the module contract); no pixel is decoded."""
    with src.open() as container:
        where = f"{container.format.name} container"
        stream = _video_stream(container, where)
        if stream.codec_context is None:
            raise NotAVideoError(f"{where}: the video stream's codec is unknown or has no decoder in this FFmpeg "
                                 "build; send H.264, HEVC, VP8/VP9, AV1, MPEG-4 or another common codec")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise TruncatedVideoError(f"{where}: the video stream header declares {width}x{height} pixels")
        if width * height > limits.max_frame_pixels:
            raise VideoTooLargeError(f"video frames are {width}x{height} = {width * height} pixels; "
                                     f"the limit is {limits.max_frame_pixels} per frame")
        rate = stream.average_rate
        if not rate or rate <= 0:
            raise NoVideoFpsError(f"{where}: the video stream declares no frame rate (average_rate {rate}); "
                                  "GLM's frame sampler needs one; remux the file with a frame rate")
        frames, from_header = int(stream.frames or 0), True
        if frames <= 0:
            frames, from_header = _count_packets(container, stream, limits), False
        if frames <= 0:
            raise NoVideoFramesError(f"{where}: the video stream has no frames")
        if frames > limits.max_frames:
            raise VideoTooLargeError(f"video has {frames} frames; the limit is {limits.max_frames}")
        fps = float(rate)
        return VideoMetadata(total_frames=frames, fps=fps, duration=float(frames / Fraction(rate)), width=width,
                             height=height, codec=stream.codec_context.name, container=container.format.name,
                             frames_from_header=from_header)


def _count_packets(container, stream, limits: VideoLimits) -> int:
    n = 0
    try:
        for packet in container.demux(stream):
            if packet.size:  # the demuxer's final flush packet is empty
                n += 1
                if n > limits.max_frames:
                    break
    except av.error.FFmpegError as e:
        raise TruncatedVideoError(f"video stream cannot be demuxed after {n} packets ({e.strerror or e}); "
                                  "the file is cut short or corrupt") from e
    return n


@dataclass(frozen=True)
class _Packets:
    """Decode-order packet facts from one demux pass."""

    pts: list[int]  # per packet, decode order
    key: list[bool]


def _scan(container, stream, limit: int) -> _Packets | None:
    """Packet timestamps and keyframe flags; None when timestamps are missing or repeated."""
    pts, key = [], []
    for packet in container.demux(stream):
        if not packet.size:
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
        key.append(packet.is_keyframe)
        if len(pts) > limit:
            break
    if len(set(pts)) != len(pts) or not key or not key[0]:
        return None
    return _Packets(pts=pts, key=key)


def _needed_packets(scan: _Packets, wanted_pts: set[int]) -> list[bool]:
    """Per packet (decode order): feed it to the decoder? Whole GOPs holding a wanted frame, and the GOP
    before one whose wanted frame precedes the GOP's keyframe in presentation order."""
    gop_of, starts = [], []
    for i, k in enumerate(scan.key):
        if k:
            starts.append(i)
        gop_of.append(len(starts) - 1)
    need_gop = [False] * len(starts)
    for i, p in enumerate(scan.pts):
        if p in wanted_pts:
            g = gop_of[i]
            need_gop[g] = True
            if p < scan.pts[starts[g]] and g > 0:
                need_gop[g - 1] = True
    return [need_gop[g] for g in gop_of]


def decode_frames(src: VideoSource, indices: list[int], meta: VideoMetadata, limits: VideoLimits = VideoLimits()
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, uint8 [H, W, 3] rgb24) for each distinct sampled index, increasing (module contract)."""
    wanted = sorted(set(indices))
    if not wanted:
        return
    with src.open() as container:
        stream = _video_stream(container, "container")
        try:
            scan = _scan(container, stream, limits.max_frames)
        except av.error.FFmpegError as e:
            raise TruncatedVideoError(f"video stream cannot be demuxed ({e.strerror or e}); "
                                      "the file is cut short or corrupt") from e
    with src.open() as container:
        stream = _video_stream(container, "container")
        stream.thread_type = "AUTO"  # frame/slice threads: same pixels, faster
        stream.codec_context.options = {"max_pixels": str(limits.max_frame_pixels)}
        if scan is None:
            yield from _decode_sequential(container, stream, wanted, meta)
        else:
            yield from _decode_gops(container, stream, wanted, scan, meta)


def _frame_rgb(frame, meta: VideoMetadata) -> np.ndarray:
    if (frame.width, frame.height) != (meta.width, meta.height):
        raise TruncatedVideoError(f"a decoded frame is {frame.width}x{frame.height} but the stream header says "
                                  f"{meta.width}x{meta.height}; frame size changes mid-stream are not supported")
    return frame.to_ndarray(format="rgb24")


def _failed(meta: VideoMetadata, decoded: int, detail: str) -> VideoError:
    """NoVideoFramesError when nothing decoded, else TruncatedVideoError; `detail` says what stopped."""
    if decoded == 0:
        return NoVideoFramesError(f"no frame of the {meta.codec} video stream decodes ({detail}; "
                                  f"{meta.total_frames} frames declared): the video data is corrupt")
    return TruncatedVideoError(f"the {meta.codec} video stream stops decoding after {decoded} frames ({detail}); "
                               f"{meta.total_frames} frames are declared: the file is cut short or corrupt")


def _decode_sequential(container, stream, wanted, meta) -> Iterator[tuple[int, np.ndarray]]:
    """transformers' loop: enumerate decoder output from the start, stop after the last wanted index."""
    got, decoded = 0, 0
    try:
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            if i == wanted[got]:
                yield i, _frame_rgb(frame, meta)
                got += 1
                if got == len(wanted):
                    return
    except av.error.FFmpegError as e:
        raise _failed(meta, decoded, f"FFmpeg: {e.strerror or e}") from e
    raise _failed(meta, decoded, f"frame {wanted[got]} was sampled")


def _decode_gops(container, stream, wanted, scan: _Packets, meta) -> Iterator[tuple[int, np.ndarray]]:
    order = sorted(scan.pts)  # presentation order: frame index -> pts
    if wanted[-1] >= len(order):
        raise TruncatedVideoError(f"the video declares {meta.total_frames} frames but its stream holds "
                                  f"{len(order)} packets; sampled frame {wanted[-1]} is missing "
                                  "(the file is cut short)")
    want = {order[i]: i for i in wanted}
    feed = _needed_packets(scan, set(want))
    ctx = stream.codec_context
    done, counter, n, feeding = set(), [0], -1, False
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            n += 1
            if n >= len(feed):
                break
            if not feed[n]:
                if feeding:  # leaving a run of needed GOPs: drain, then reset for the next run
                    yield from _take(ctx.decode(None), want, done, counter, meta)
                    ctx.flush_buffers()
                    feeding = False
                if len(done) == len(want):
                    break
                continue
            feeding = True
            yield from _take(ctx.decode(packet), want, done, counter, meta)
        if feeding:
            yield from _take(ctx.decode(None), want, done, counter, meta)
    except av.error.FFmpegError as e:
        raise _failed(meta, counter[0], f"FFmpeg at packet {n}: {e.strerror or e}") from e
    if len(done) != len(want):
        raise _failed(meta, counter[0], f"sampled frame {min(set(wanted) - done)} never came out of the decoder")


def _take(frames, want: dict[int, int], done: set[int], counter: list[int], meta) -> Iterator[tuple[int, np.ndarray]]:
    for frame in frames:
        counter[0] += 1
        index = want.get(frame.pts)
        if index is not None and index not in done:
            done.add(index)
            yield index, _frame_rgb(frame, meta)
