"""Video preparation cost, stage by stage, and GOP-limited decoding against transformers' sequential decode.

    python -m benchmarks.video_prepare [--reps 3] [--long-seconds 120]

Clip 1: 10 s of 640x360 at 30 fps (H.264, B-frames, keyframe every 2 s): probe (header / packet count), frame
sampling, decode of the sampled frames (RGB), resize + normalise + patchify, and the whole `prepare_video`.
Clip 2: a long 320x180 clip at 25 fps (keyframe every 2 s): time to decode its sampled frames our way
(only the GOPs holding them) and transformers' way (`read_video_pyav`: decode from the start to the last one),
with the default sampling (a frame every second or so: every GOP is needed) and with max_frames=16.
Medians of --reps runs; peak RSS of this process at the end. Clips are written with PyAV first (not timed).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import av
import numpy as np

from benchmarks.video_clips import clip_bytes


def _median(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    from edge.vision.resample import resize_bicubic_aa
    from edge.vision.video import decode_frames, open_video, probe
    from edge.vision.video_preprocess import VideoConfig, normalize, patchify_pair, plan_size, prepare_video
    from edge.vision.video_sampling import SamplingOptions, sample_frames

    p = argparse.ArgumentParser(prog="python -m benchmarks.video_prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--long-seconds", type=int, default=120)
    args = p.parse_args(argv)

    data = clip_bytes(640, 360, 30, 10, gop=60, bframes=2)
    src = open_video(data)
    meta = probe(src)
    indices = sample_frames(meta.total_frames, meta.fps, meta.duration)
    cfg = VideoConfig()
    h, w = plan_size(len(indices), meta.height, meta.width, cfg)
    frames = dict(decode_frames(src, indices, meta))

    def preprocess():
        resized = {i: resize_bicubic_aa(f, h, w) for i, f in frames.items()}
        for g in range(len(indices) // 2):
            patchify_pair(normalize(np.stack([resized[i] for i in indices[2 * g:2 * g + 2]]), cfg), cfg)

    video = prepare_video(data)
    short = {
        "clip": f"{meta.width}x{meta.height}, {meta.duration:g} s at {meta.fps:g} fps, {len(data)} bytes",
        "sampled_frames": len(indices), "groups": len(video.groups), "resized": f"{w}x{h}",
        "video_tokens": video.n_tokens,
        "probe_s": _median(lambda: probe(open_video(data)), args.reps),
        "sampling_s": _median(lambda: sample_frames(meta.total_frames, meta.fps, meta.duration), args.reps),
        "decode_s": _median(lambda: dict(decode_frames(src, indices, meta)), args.reps),
        "preprocess_s": _median(preprocess, args.reps),
        "prepare_video_s": _median(lambda: prepare_video(data), args.reps),
    }

    long = clip_bytes(320, 180, 25, args.long_seconds, gop=50, bframes=2, seed=1)
    lsrc = open_video(long)
    lmeta = probe(lsrc)

    def sequential(lidx):  # transformers' read_video_pyav loop
        wanted, out = set(lidx), []
        with lsrc.open() as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i > lidx[-1]:
                    break
                if i in wanted:
                    out.append(frame.to_ndarray(format="rgb24"))
        return out

    long_rows = []
    for options in (SamplingOptions(), SamplingOptions(max_frames=16)):
        lidx = sample_frames(lmeta.total_frames, lmeta.fps, lmeta.duration, options=options)
        ours_s = _median(lambda: dict(decode_frames(lsrc, lidx, lmeta)), args.reps)
        seq_s = _median(lambda: sequential(lidx), args.reps)
        long_rows.append({"sampling": options.key(), "sampled_frames": len(lidx), "gop_decode_s": round(ours_s, 3),
                          "sequential_decode_s": round(seq_s, 3), "speedup": round(seq_s / ours_s, 2)})
    report = {
        "short_clip": {k: round(v, 4) if isinstance(v, float) else v for k, v in short.items()},
        "long_clip": {"clip": f"320x180, {lmeta.duration:g} s at {lmeta.fps:g} fps, keyframe every 2 s",
                      "runs": long_rows},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pyav": av.__version__,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
