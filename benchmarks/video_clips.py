"""Synthetic video clips written with PyAV, for tests, the video fuzzer and benchmarks (never downloaded).

`clip_bytes(width, height, fps, seconds, ...)` encodes deterministic moving, noisy RGB frames (content changes
every frame, so temporal pairs differ) into a container in memory. Codec options fix the GOP (keyframe
interval) and the number of B-frames, so decode-order != presentation-order streams can be made on purpose.
"""

from __future__ import annotations

import io

import av
import numpy as np


def frame_rgb(width: int, height: int, i: int, seed: int = 0) -> np.ndarray:
    """Frame i of the synthetic clip: moving gradients plus noise, uint8 [height, width, 3]."""
    rng = np.random.default_rng([seed, i])
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 3 + i * 7) % 256, (y * 2 + i * 5) % 256, ((x + y) // 2 + i * 11) % 256], -1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def clip_bytes(width: int, height: int, fps: int, seconds: float, *, container: str = "mp4", codec: str = "libx264",
               gop: int = 12, bframes: int = 2, seed: int = 0) -> bytes:
    """Encoded clip of round(fps * seconds) frames; container is an FFmpeg muxer name (mp4, matroska, webm, avi)."""
    opts = {}
    if codec == "libx264":
        opts = {"preset": "veryfast", "x264opts": f"bframes={bframes}:keyint={gop}:min-keyint={gop}:scenecut=0"}
    elif codec == "mpeg4":
        opts = {"g": str(gop), "bf": str(bframes)}
    elif codec in ("libvpx", "libvpx-vp9"):
        opts = {"g": str(gop), "deadline": "realtime", "cpu-used": "8"}
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps, options=opts)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(int(round(fps * seconds))):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_rgb(width, height, i, seed), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
