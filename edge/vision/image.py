"""Image loading and HF-exact preprocessing for GLM-4.6V (numpy + Pillow only, no torch).

Contract
- `prepare_image(source, config, ...)` takes bytes, a filesystem path (str / os.PathLike, or a
  ``file://`` URL) or a ``data:`` URL and returns a frozen `PreparedImage`: float32 patches
  [gh*gw, C*T*P*P] in merge-block order (the frame repeated T times), grid_thw (1, gh, gw) and
  gh*gw/merge^2 LLM tokens (merged_rows x merged_cols in raster order).
- Decoding: EXIF orientation applied (ImageOps.exif_transpose, as photo viewers show it; HF applies
  none), first frame of animations, alpha (and palette/colour-key transparency) composited on white
  exactly like transformers' `convert_to_rgb`, 16-bit grey (I;16*, I) mapped to 8 bit with
  round(v*255/65535), CMYK/L/P/1/YCbCr through Pillow's `convert("RGB")`. ICC profiles are ignored.
- Given the same RGB image, the output equals `Glm46VImageProcessorPil` built from the same
  preprocessor_config: same `smart_resize` (pixel bounds count `temporal_patch_size` frames), same
  uint8 Pillow resize (BICUBIC by default), same float64 rescale then float32 normalise, so the
  values are bit-identical.
- Limits are checked before decoding pixels: `max_bytes` on the encoded size, `max_decoded_pixels`
  on the header size (Pillow's decompression-bomb error and warning become ImageTooLargeError).
  Only `formats` are decoded (never EPS or other plugins that shell out).
- Bad input raises edge.errors types whose message says what was seen and what is allowed.
- Paths are read as given: the server must apply its media allow-list (MediaAccessError) first.
Pure functions; no module-level mutable state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import re
import struct
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge.errors import (
    AspectRatioError, CheckpointError, EmptyImageError, ImageError, ImageTooLargeError, InputError,
    MediaAccessError, NotAnImageError, TruncatedImageError, UnsupportedImageFormatError,
)

MAX_ASPECT_RATIO = 200
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_DECODED_PIXELS = 80_000_000
DEFAULT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Magic numbers: allowed formats (a failed open means a cut or corrupt file) and known others.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
          (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
          (b"%PDF", "PDF"), (b"%!PS", "PostScript"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"8BPS", "PSD"),
          (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"\xffO\xffQ", "JPEG 2000"),
          (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"))


@dataclass(frozen=True)
class PatchConfig:
    """What image and video preprocessing share: patching, merging, the pixel budget and normalisation.
    `min_pixels`/`max_pixels` are HF's size.shortest_edge/longest_edge and count `temporal_patch_size` frames."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 112 * 112
    max_pixels: int = 28 * 28 * 15000
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    @classmethod
    def _from_json(cls, cfg: Mapping, lo, hi, what: str, **extra):
        out = cls(patch_size=int(cfg.get("patch_size", cls.patch_size)),
                  temporal_patch_size=int(cfg.get("temporal_patch_size", cls.temporal_patch_size)),
                  merge_size=int(cfg.get("merge_size", cls.merge_size)), min_pixels=int(lo), max_pixels=int(hi),
                  image_mean=tuple(float(v) for v in cfg.get("image_mean", cls.image_mean)),
                  image_std=tuple(float(v) for v in cfg.get("image_std", cls.image_std)),
                  rescale_factor=float(cfg.get("rescale_factor", cls.rescale_factor)), **extra)
        if len(out.image_mean) != 3 or len(out.image_std) != 3 or not 0 < out.min_pixels <= out.max_pixels:
            raise CheckpointError(f"{what}: need 3 means/stds and 0 < min_pixels <= max_pixels, got {out}")
        return out

    @property
    def factor(self) -> int:
        """Side of one merged block (one LLM token) in pixels: patch_size * merge_size."""
        return self.patch_size * self.merge_size

    @property
    def pixels_per_token(self) -> int:
        """HF pixel-budget units per LLM token (factor^2 pixels, counted temporal_patch_size times)."""
        return self.factor * self.factor * self.temporal_patch_size

    def fingerprint(self) -> str:
        """Short stable hash of every field, for cache keys."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ImageConfig(PatchConfig):
    """Image preprocessing settings (an image is duplicated to fill the temporal patch)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 112 * 112
    max_pixels: int = 28 * 28 * 15000  # transformers' class default when the json has no size
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)

    @classmethod
    def from_preprocessor_config(cls, cfg: Mapping) -> ImageConfig:
        """Build from a checkpoint's preprocessor_config.json dict (legacy min/max_pixels accepted)."""
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if cfg.get(flag, True) is not True:
                raise CheckpointError(f"preprocessor_config {flag}={cfg[flag]!r}; only true is supported")
        size = cfg.get("size") or {}
        lo = size.get("shortest_edge", size.get("min_pixels", cfg.get("min_pixels", cls.min_pixels)))
        hi = size.get("longest_edge", size.get("max_pixels", cfg.get("max_pixels", cls.max_pixels)))
        return cls._from_json(cfg, lo, hi, "preprocessor_config", resample=int(cfg.get("resample", cls.resample)))


@dataclass(frozen=True, eq=False)
class PreparedImage:
    pixel_patches: np.ndarray  # float32 [gh*gw, C*T*P*P], read-only
    grid_thw: tuple[int, int, int]  # (1, gh, gw) in patches
    n_tokens: int  # gh*gw/merge^2 = merged_rows * merged_cols
    merged_rows: int
    merged_cols: int
    original_size: tuple[int, int]  # (w, h) after EXIF transpose
    resized_size: tuple[int, int]  # (w, h) fed to the encoder
    sha256: str  # of the source bytes
    cache_key: str  # sha256 + config + resized size: equal keys mean equal patches


def content_hash(data: bytes) -> str:
    """Hex sha256 of the encoded image bytes."""
    return hashlib.sha256(data).hexdigest()


def smart_resize(height: int, width: int, *, factor: int = 28, min_pixels: int = 112 * 112,
                 max_pixels: int = 28 * 28 * 15000, temporal_factor: int = 2) -> tuple[int, int]:
    """Target (height, width), multiples of `factor`, exactly as transformers' glm46v smart_resize
    for one image (num_frames = temporal_factor)."""
    if height <= 0 or width <= 0:
        raise EmptyImageError(f"image is {width}x{height} pixels; both sides must be at least 1")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise AspectRatioError(f"aspect ratio {max(height, width) / min(height, width):.1f}:1 "
                               f"(after scaling to {width}x{height}); at most {MAX_ASPECT_RATIO}:1 is allowed")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    frames = temporal_factor  # t_bar == num_frames == temporal_factor for an image
    if frames * h_bar * w_bar > max_pixels:
        beta = math.sqrt((frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif frames * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def pixel_bounds(config: ImageConfig, *, min_tokens: int | None = None, max_tokens: int | None = None,
                 min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """Per-call (min_pixels, max_pixels) in HF units (temporal frames counted). Tokens are converted
    with config.pixels_per_token; pixels override the config as HF's size would. A bound the caller
    leaves out defaults to the config's, moved to not contradict the one given."""
    for name, value in (("min_tokens", min_tokens), ("max_tokens", max_tokens),
                        ("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if min_tokens is not None and min_pixels is not None or max_tokens is not None and max_pixels is not None:
        raise InputError("give an image budget either in tokens or in pixels, not both")
    lo = min_tokens * config.pixels_per_token if min_tokens is not None else min_pixels
    hi = max_tokens * config.pixels_per_token if max_tokens is not None else max_pixels
    if lo is None:  # a caller's maximum below the config minimum lowers the minimum, and vice versa
        lo = config.min_pixels if hi is None else min(config.min_pixels, hi)
    if hi is None:
        hi = max(config.max_pixels, lo)
    if lo > hi:
        raise InputError(f"image budget minimum {lo} exceeds maximum {hi} "
                         f"(pixels counted over {config.temporal_patch_size} frames)")
    return lo, hi


def read_source(source: bytes | bytearray | memoryview | str | os.PathLike, *,
                max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Encoded bytes of an image given as bytes, a path, a file:// URL or a data: URL."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, str) and source[:5].lower() == "data:":
        data = _decode_data_url(source, max_bytes)
    elif isinstance(source, str) and re.match(r"^(?!file://)[a-zA-Z][a-zA-Z0-9+.-]*://", source):
        raise MediaAccessError(f"image URL scheme {source.split(':', 1)[0]!r} is not fetched (offline runtime); "
                               "send the image inline as a data: URL or bytes")
    elif isinstance(source, (str, os.PathLike)):
        path = urllib.parse.unquote(source[7:]) if isinstance(source, str) and source.startswith("file://") else source
        try:
            size = os.stat(path).st_size
            if size > max_bytes:
                raise ImageTooLargeError(f"image file {os.fspath(path)!r} is {size} bytes; the limit is {max_bytes}")
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as e:
            raise ImageError(f"cannot read image file {os.fspath(path)!r}: {e.strerror or e}") from e
    else:
        raise ImageError(f"image source must be bytes, a path or a data: URL, got {type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {max_bytes}")
    return data


def _decode_data_url(url: str, max_bytes: int) -> bytes:
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise ImageError(f"malformed data URL (no ',' after the media type): {url[:60]!r}")
    if head.split(";")[-1].strip().lower() != "base64":
        return urllib.parse.unquote_to_bytes(payload)
    payload = re.sub(r"\s+", "", urllib.parse.unquote(payload) if "%" in payload else payload)
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise ImageTooLargeError(f"data URL holds about {len(payload) * 3 // 4} bytes; the limit is {max_bytes}")
    payload = payload.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"data URL payload is not valid base64 ({e}); expected data:image/<type>;base64,<data>") from e


def _sniff(data: bytes) -> str | None:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        heif = data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis")
        return "HEIF/AVIF" if heif else "ISO media (video)"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or head.startswith(b"<?xml") and b"<svg" in head:
        return "SVG"
    return None


def decode_image(data: bytes, *, max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
                 formats: tuple[str, ...] = DEFAULT_FORMATS) -> Image.Image:
    """Decode encoded bytes to an upright RGB Pillow image (see the module contract)."""
    if not data:
        raise NotAnImageError("image data is empty (0 bytes)")
    allowed = ", ".join(formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"image header claims too many pixels: {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as e:
        kind = _sniff(data)
        if kind == "PNG" and len(data) >= 24 and 0 in struct.unpack(">II", data[16:24]):
            raise EmptyImageError("PNG header declares %dx%d pixels; both sides must be at least 1"
                                  % struct.unpack(">II", data[16:24])) from e
        if kind in formats:
            raise TruncatedImageError(f"data starts like a {kind} file but its header is cut short or corrupt "
                                      f"({len(data)} bytes)") from e
        if kind is not None:
            raise UnsupportedImageFormatError(f"{kind} images are not supported; allowed formats: {allowed}") from e
        raise NotAnImageError(f"data is not an image in an allowed format ({allowed}); "
                              f"first bytes: {data[:16]!r}") from e
    w, h = img.size
    if w <= 0 or h <= 0:
        raise EmptyImageError(f"image is {w}x{h} pixels; both sides must be at least 1")
    if w * h > max_decoded_pixels:
        raise ImageTooLargeError(f"{img.format} image is {w}x{h} = {w * h} pixels; the limit is {max_decoded_pixels}")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        if "truncat" in str(e).lower() or isinstance(e, EOFError):
            raise TruncatedImageError(f"{img.format} image {w}x{h} is truncated: {e}") from e
        raise NotAnImageError(f"{img.format} image {w}x{h} has corrupt data: {e}") from e
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif img.mode == "F":
        raise UnsupportedImageFormatError("floating-point (mode F) images are not supported; send 8/16-bit images")
    bands = img.getbands()
    try:
        if "A" in bands or "a" in bands or img.info.get("transparency") is not None:
            rgba = img.convert("RGBA")  # as transformers' convert_to_rgb: composite on opaque white
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as e:
        raise UnsupportedImageFormatError(f"image mode {img.mode} cannot be converted to RGB: {e}") from e


def plan_size(width: int, height: int, config: ImageConfig, *, min_tokens: int | None = None,
              max_tokens: int | None = None, min_pixels: int | None = None,
              max_pixels: int | None = None) -> tuple[int, int]:
    """Resized (height, width) for an image of width x height: HF's smart_resize within the budget.
    max_tokens is hard: if rounding up to the minimum would pass it, the minimum is dropped; an image
    that still needs more tokens (extreme aspect ratios) raises ImageTooLargeError."""
    lo, hi = pixel_bounds(config, min_tokens=min_tokens, max_tokens=max_tokens,
                          min_pixels=min_pixels, max_pixels=max_pixels)
    kw = dict(factor=config.factor, max_pixels=hi, temporal_factor=config.temporal_patch_size)
    h, w = smart_resize(height, width, min_pixels=lo, **kw)
    if max_tokens is not None and h * w > max_tokens * config.factor**2:
        h, w = smart_resize(height, width, min_pixels=1, **kw)
        if h * w > max_tokens * config.factor**2:
            raise ImageTooLargeError(f"a {width}x{height} image needs at least {h * w // config.factor**2} tokens "
                                     f"({w // config.factor}x{h // config.factor} blocks); max_tokens is {max_tokens}")
    return h, w


def preprocess(image: Image.Image, config: ImageConfig, size: tuple[int, int]) -> np.ndarray:
    """Stretch an RGB image to size=(h, w) and patchify: float32 [N, C*T*P*P], merge-block order."""
    if image.mode != "RGB":
        raise ImageError(f"preprocess expects an RGB image, got mode {image.mode}")
    h, w = size
    rgb = np.asarray(image.resize((w, h), resample=config.resample))  # uint8 [h, w, 3], as HF's PIL backend
    x = (rgb.astype(np.float64) * config.rescale_factor).astype(np.float32)  # HF: float64 rescale, then f32
    x = (x - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    gh, gw = h // p, w // p
    x = x.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)  # bh bw mh mw C ph pw
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
    return np.ascontiguousarray(x.reshape(gh * gw, 3 * t * p * p))


def prepare_image(source: bytes | bytearray | memoryview | str | os.PathLike, config: ImageConfig | None = None, *,
                  min_tokens: int | None = None, max_tokens: int | None = None, min_pixels: int | None = None,
                  max_pixels: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
                  formats: tuple[str, ...] = DEFAULT_FORMATS) -> PreparedImage:
    """Load, decode and preprocess one image (budget as in `plan_size`, limits as in the module doc)."""
    config = config or ImageConfig()
    budget = dict(min_tokens=min_tokens, max_tokens=max_tokens, min_pixels=min_pixels, max_pixels=max_pixels)
    pixel_bounds(config, **budget)  # reject a bad budget before reading anything
    data = read_source(source, max_bytes=max_bytes)
    image = decode_image(data, max_decoded_pixels=max_decoded_pixels, formats=formats)
    h, w = plan_size(image.width, image.height, config, **budget)
    patches = preprocess(image, config, (h, w))
    patches.flags.writeable = False
    rows, cols = h // config.factor, w // config.factor
    digest = content_hash(data)
    key = hashlib.sha256(f"{digest}|{config.fingerprint()}|{w}x{h}".encode()).hexdigest()
    return PreparedImage(pixel_patches=patches, grid_thw=(1, h // config.patch_size, w // config.patch_size),
                         n_tokens=rows * cols, merged_rows=rows, merged_cols=cols, original_size=image.size,
                         resized_size=(w, h), sha256=digest, cache_key=key)
