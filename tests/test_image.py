"""edge/vision/image.py against transformers' PIL image processor for GLM-4.6V, plus loader and error cases.

Every image is built in code. The reference gets the same decoded image our loader produces (or the
raw Pillow image where transformers' own RGB conversion applies), so the comparison covers resize,
rescale, normalisation and patch order; EXIF and 16-bit handling are checked independently.
"""

import base64
import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from edge import errors
from edge.vision.image import (
    ImageConfig, PreparedImage, content_hash, decode_image, pixel_bounds, plan_size, prepare_image, smart_resize,
)

try:
    from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil as HFProcessor
    from transformers.models.glm46v.image_processing_pil_glm46v import smart_resize as hf_smart_resize
except ImportError:  # older transformers: GLM-4.1V class, same processing
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil as HFProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize as hf_smart_resize

# What GLM-4.6V-Flash's preprocessor_config.json holds (doc section 4).
PREPROCESSOR_CONFIG = {
    "size": {"shortest_edge": 12544, "longest_edge": 9633792},
    "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "do_convert_rgb": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
}
CONFIG = ImageConfig.from_preprocessor_config(PREPROCESSOR_CONFIG)
TOL = 1e-6


def pattern(w, h, seed=0, smooth=False):
    """Deterministic content: gradients, a checkerboard and noise (uint8 [h, w, 3]); `smooth`
    keeps only gradients (survives JPEG almost unchanged)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    if smooth:
        return np.stack([r, g, r * g / 255], -1).astype(np.uint8)
    b = 127 + 100 * (((x // 7) + (y // 5)) % 2) - 50
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def hf_reference(img, min_pixels=None, max_pixels=None):
    cfg = dict(PREPROCESSOR_CONFIG)
    if min_pixels or max_pixels:
        cfg["size"] = {"shortest_edge": min_pixels or cfg["size"]["shortest_edge"],
                       "longest_edge": max_pixels or cfg["size"]["longest_edge"]}
    out = HFProcessor(**cfg)(images=[img])
    return np.asarray(out["pixel_values"]), tuple(int(v) for v in np.asarray(out["image_grid_thw"])[0])


def assert_matches_hf(prep: PreparedImage, hf_input, **budget):
    ref, grid = hf_reference(hf_input, **budget)
    assert prep.grid_thw == grid
    assert prep.pixel_patches.dtype == np.float32 and prep.pixel_patches.shape == ref.shape
    err = float(np.abs(prep.pixel_patches - ref).max())
    assert err <= TOL, f"max abs error {err}"
    t, gh, gw = grid
    assert (t, prep.merged_rows, prep.merged_cols, prep.n_tokens) == (1, gh // 2, gw // 2, gh * gw // 4)
    assert prep.resized_size == (gw * 14, gh * 14)
    return err


# --- parity with transformers ------------------------------------------------------------------

SIZES = [(56, 84), (100, 70), (333, 517), (20, 300), (1, 1), (5000, 25), (28, 28), (27, 29), (799, 601)]


@pytest.mark.parametrize("w,h", SIZES)
def test_rgb_sizes_match_hf(w, h):
    img = Image.fromarray(pattern(w, h, seed=w * 7 + h))
    prep = prepare_image(encode(img), CONFIG)
    assert prep.original_size == (w, h)
    assert_matches_hf(prep, img)


def test_huge_image_is_budget_limited_and_matches_hf():
    data = encode(Image.fromarray(pattern(4000, 3000, seed=3)), "JPEG", quality=90)
    prep = prepare_image(data, CONFIG)
    assert 6000 < prep.n_tokens <= 6144  # default budget 9633792 / (2 * 28 * 28)
    assert_matches_hf(prep, Image.open(io.BytesIO(data)))


def _rgba():
    a = pattern(90, 60, seed=1)
    alpha = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (60, 1))
    alpha[:, :10], alpha[:, -10:] = 0, 255
    return Image.fromarray(np.dstack([a, alpha]), "RGBA")


def _palette_transparent():
    p = Image.fromarray(pattern(70, 50, seed=2)).quantize(16)
    arr = np.array(p)
    arr[:10, :10] = 0
    p = Image.fromarray(arr, "P")
    p.putpalette(Image.fromarray(pattern(70, 50, seed=2)).quantize(16).getpalette())
    p.info["transparency"] = 0
    return p


MODE_CASES = {
    "RGBA": lambda: encode(_rgba()),
    "LA": lambda: encode(_rgba().convert("LA")),
    "L": lambda: encode(Image.fromarray(pattern(120, 45, seed=4)[..., 0])),
    "P": lambda: encode(Image.fromarray(pattern(64, 96, seed=5)).quantize(32)),
    "P+transparency": lambda: encode(_palette_transparent()),
    "CMYK-JPEG": lambda: encode(Image.fromarray(pattern(80, 50, seed=6)).convert("CMYK"), "JPEG", quality=95),
    "1-bit": lambda: encode(Image.fromarray(pattern(40, 40, seed=7)[..., 0]).convert("1")),
}


@pytest.mark.parametrize("case", sorted(MODE_CASES))
def test_modes_match_hf_on_raw_decode(case):
    """transformers does its own RGB conversion on the raw Pillow image: ours must equal it."""
    data = MODE_CASES[case]()
    raw = Image.open(io.BytesIO(data))
    assert raw.mode != "RGB"
    assert_matches_hf(prepare_image(data, CONFIG), raw)


def test_alpha_composites_on_white():
    src = _rgba()
    rgb = np.asarray(decode_image(encode(src)), dtype=np.int32)
    a = np.asarray(src, dtype=np.int32)
    assert (rgb[:, :10] == 255).all()  # fully transparent -> white
    assert (rgb[:, -10:] == a[:, -10:, :3]).all()  # opaque -> unchanged
    alpha = a[..., 3:] / 255
    expected = a[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(rgb - expected).max() <= 1
    pal = np.asarray(decode_image(encode(_palette_transparent())))
    assert (pal[:10, :10] == 255).all() and not (pal[10:, 10:] == 255).all()


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16bit_grayscale(mode):
    wide = (np.linspace(0, 65535, 130 * 70).reshape(70, 130)).astype(np.uint16)
    wide[0, :4] = [0, 65535, 128 * 257, 128 * 257 + 128]
    img = Image.fromarray(wide) if mode == "I;16" else Image.fromarray(wide.astype(np.int32), "I")
    data = encode(img, "PNG" if mode == "I;16" else "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    rgb = decode_image(data)
    arr = np.asarray(rgb)
    assert (arr[..., 0] == arr[..., 2]).all()
    assert (arr[..., 0] == np.round(wide / 257).astype(np.uint8)).all()  # scaled, not clipped at 255
    assert arr[0, :4, 0].tolist() == [0, 255, 128, 128]
    assert_matches_hf(prepare_image(data, CONFIG), rgb)


# EXIF orientation -> how to store an upright picture so that a viewer shows it upright.
T = Image.Transpose
STORE = {1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
         6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(STORE))
def test_exif_orientation(orientation):
    upright = Image.fromarray(pattern(96, 60, smooth=True))
    stored = upright.transpose(STORE[orientation]) if STORE[orientation] is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, subsampling=0, exif=exif)
    prep = prepare_image(data, CONFIG)
    assert prep.original_size == (96, 60)
    shown = np.asarray(decode_image(data), dtype=np.int32)
    assert np.abs(shown - np.asarray(upright, dtype=np.int32)).mean() < 2  # JPEG noise; wrong way ~40+
    assert_matches_hf(prep, ImageOps.exif_transpose(Image.open(io.BytesIO(data))))


def test_patch_order_is_merge_block_major_with_duplicated_frame():
    arr = pattern(56, 84, seed=9)
    prep = prepare_image(encode(Image.fromarray(arr)), CONFIG, min_pixels=1)  # no resize: 56x84 is on the grid
    assert prep.grid_thw == (1, 6, 4)
    mean, std = np.array(CONFIG.image_mean, np.float32), np.array(CONFIG.image_std, np.float32)
    x = prep.pixel_patches.reshape(-1, 3, 2, 14, 14)
    assert (x[:, :, 0] == x[:, :, 1]).all()
    pixels = np.rint((x[:, :, 0].transpose(0, 2, 3, 1) * std + mean) * 255).astype(np.int32)
    for row, (py, px) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 0)]):
        assert (pixels[row] == arr[py * 14:(py + 1) * 14, px * 14:(px + 1) * 14]).all(), row


# --- smart_resize, config, budgets ---------------------------------------------------------------


def test_smart_resize_matches_reference_on_many_sizes():
    rng = np.random.default_rng(10)
    sizes = [(h, w) for h in (1, 2, 13, 27, 28, 29, 41, 42, 70, 98, 111, 224, 1000) for w in (1, 14, 28, 42, 70, 333)]
    sizes += [tuple(int(v) for v in rng.integers(1, 9000, 2)) for _ in range(400)]
    budgets = [(12544, 9633792), (1568, 1568 * 16), (100, 10**9), (1568 * 500, 1568 * 600)]
    for h, w in sizes:
        for lo, hi in budgets:
            try:
                expected = hf_smart_resize(2, h, w, temporal_factor=2, factor=28, min_pixels=lo, max_pixels=hi)
            except ValueError:
                with pytest.raises(errors.AspectRatioError):
                    smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
                continue
            assert smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi) == expected, (h, w, lo, hi)


def test_smart_resize_known_values():
    assert smart_resize(70, 100, min_pixels=12544, max_pixels=9633792) == (56, 112)  # round(2.5) == 2
    assert smart_resize(98, 98, min_pixels=12544, max_pixels=9633792) == (112, 112)  # round(3.5) == 4
    assert smart_resize(1, 1, min_pixels=12544, max_pixels=9633792) == (84, 84)  # 28x28, then min budget
    assert smart_resize(1, 200, min_pixels=1, max_pixels=10**9) == (28, 5600)  # 200:1 is allowed
    with pytest.raises(errors.EmptyImageError):
        smart_resize(0, 5)


def test_config_from_preprocessor_json():
    assert CONFIG.min_pixels == 12544 and CONFIG.max_pixels == 9633792
    assert CONFIG.pixels_per_token == 1568 and CONFIG.max_pixels // CONFIG.pixels_per_token == 6144
    legacy = {k: v for k, v in PREPROCESSOR_CONFIG.items() if k != "size"}
    assert ImageConfig.from_preprocessor_config({**legacy, "min_pixels": 3136, "max_pixels": 31360}).max_pixels == 31360
    assert ImageConfig.from_preprocessor_config({**legacy, "size": {"min_pixels": 1, "max_pixels": 9}}).min_pixels == 1
    assert ImageConfig.from_preprocessor_config({}).max_pixels == 28 * 28 * 15000  # transformers' class default
    with pytest.raises(errors.CheckpointError):
        ImageConfig.from_preprocessor_config({**PREPROCESSOR_CONFIG, "do_normalize": False})
    with pytest.raises(errors.CheckpointError):
        ImageConfig.from_preprocessor_config({**PREPROCESSOR_CONFIG, "image_mean": [0.5]})


def test_token_budget():
    img = Image.fromarray(pattern(1000, 800, seed=11))
    data = encode(img)
    small = prepare_image(data, CONFIG, max_tokens=64)
    assert small.n_tokens <= 64 and small.n_tokens >= 48
    assert_matches_hf(small, img, max_pixels=64 * 1568)
    tiny = Image.fromarray(pattern(56, 56, seed=12))
    big = prepare_image(encode(tiny), CONFIG, min_tokens=100)
    assert big.n_tokens >= 100
    assert_matches_hf(big, tiny, min_pixels=100 * 1568)
    assert prepare_image(encode(tiny), CONFIG).n_tokens == 9  # default minimum: 8 tokens -> 3x3 blocks
    assert_matches_hf(prepare_image(data, CONFIG, max_pixels=200_000), img, max_pixels=200_000)
    assert pixel_bounds(CONFIG) == (12544, 9633792)
    assert pixel_bounds(CONFIG, min_tokens=2, max_tokens=3) == (3136, 4704)
    for bad in ({"max_tokens": 0}, {"min_tokens": 10, "max_tokens": 5}, {"max_tokens": 5, "max_pixels": 9000},
                {"min_pixels": 2.5}):
        with pytest.raises(errors.InputError):
            pixel_bounds(CONFIG, **bad)
    # HF would round 40x60 up to the 8-token minimum as 3x4 = 12 blocks: an explicit max_tokens wins.
    assert hf_smart_resize(2, 40, 60, min_pixels=12544, max_pixels=9 * 1568) == (84, 112)
    assert plan_size(60, 40, CONFIG, max_tokens=9) == (28, 56)
    assert prepare_image(encode(Image.fromarray(pattern(60, 40))), CONFIG, max_tokens=9).n_tokens == 2
    assert plan_size(60, 40, CONFIG, max_tokens=4) == (28, 56)
    assert pixel_bounds(CONFIG, max_tokens=4) == (6272, 6272)  # minimum moved below the caller's maximum
    with pytest.raises(errors.ImageTooLargeError, match="max_tokens"):  # 200:1 cannot fit 4 tokens
        prepare_image(encode(Image.fromarray(pattern(5000, 25))), CONFIG, max_tokens=4)


# --- sources, hashing ----------------------------------------------------------------------------


def test_sources_and_hashes(tmp_path):
    data = encode(Image.fromarray(pattern(60, 40, seed=13)))
    path = tmp_path / "x.png"
    path.write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    results = [prepare_image(s, CONFIG) for s in (data, bytearray(data), str(path), path, f"file://{path}", url,
                                                 url.rstrip("=").replace("+", "-").replace("/", "_"))]
    for r in results:
        assert r.sha256 == hashlib.sha256(data).hexdigest() == content_hash(data)
        assert r.cache_key == results[0].cache_key and np.array_equal(r.pixel_patches, results[0].pixel_patches)
    assert prepare_image(data, CONFIG, max_tokens=4).cache_key != results[0].cache_key
    assert prepare_image(data, ImageConfig()).cache_key != results[0].cache_key  # different max_pixels
    assert not results[0].pixel_patches.flags.writeable
    with pytest.raises(Exception):
        results[0].n_tokens = 1  # frozen


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode_image(buf.getvalue()))[20, 20].tolist() == [255, 0, 0]


# --- bad input -----------------------------------------------------------------------------------


def _chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header(w, h):
    """A valid-looking PNG that claims w x h pixels but holds almost no data."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")


NOISE_PNG = encode(Image.fromarray(np.random.default_rng(14).integers(0, 256, (200, 300, 3), np.uint8)))
NOISE_JPEG = encode(Image.fromarray(np.random.default_rng(14).integers(0, 256, (200, 300, 3), np.uint8)), "JPEG")
BAD_INPUTS = {
    "truncated PNG": (NOISE_PNG[: len(NOISE_PNG) // 2], {}, errors.TruncatedImageError, "truncated"),
    "PNG cut in header": (NOISE_PNG[:30], {}, errors.TruncatedImageError, "PNG"),
    "truncated JPEG": (NOISE_JPEG[: len(NOISE_JPEG) // 2], {}, errors.TruncatedImageError, "truncated"),
    "random bytes": (np.random.default_rng(15).bytes(4000), {}, errors.NotAnImageError, "allowed format"),
    "empty bytes": (b"", {}, errors.NotAnImageError, "0 bytes"),
    "text file": (b"hello, this is a text file\n" * 20, {}, errors.NotAnImageError, "not an image"),
    "SVG": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', {},
            errors.UnsupportedImageFormatError, "SVG"),
    "PDF": (b"%PDF-1.7\n%\xe2\xe3\n1 0 obj\n", {}, errors.UnsupportedImageFormatError, "PDF"),
    "aspect 300:1": (encode(Image.new("RGB", (1, 300))), {}, errors.AspectRatioError, "300"),
    "aspect 201:1": (encode(Image.new("RGB", (201, 1))), {}, errors.AspectRatioError, "at most 200"),
    "zero width": (png_header(0, 5), {}, errors.EmptyImageError, "0x5"),
    "bomb header": (png_header(100_000, 100_000), {}, errors.ImageTooLargeError, "pixels"),
    "bomb under PIL warning": (png_header(10_000, 10_000), {"max_decoded_pixels": 10**9}, errors.ImageTooLargeError,
                               "pixels"),
    "over max_decoded_pixels": (NOISE_PNG, {"max_decoded_pixels": 50_000}, errors.ImageTooLargeError, "50000"),
    "over max_bytes": (NOISE_PNG, {"max_bytes": 1000}, errors.ImageTooLargeError, "1000"),
    "bad base64": ("data:image/png;base64,iVBORw0K@@@!!", {}, errors.ImageError, "base64"),
    "data URL without comma": ("data:image/png;base64", {}, errors.ImageError, "malformed data URL"),
    "data URL of text": ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), {},
                         errors.NotAnImageError, "allowed format"),
    "data URL over max_bytes": ("data:image/png;base64," + base64.b64encode(NOISE_PNG).decode(), {"max_bytes": 5000},
                                errors.ImageTooLargeError, "5000"),
    "disallowed format": (NOISE_PNG, {"formats": ("JPEG",)}, errors.UnsupportedImageFormatError, "PNG images"),
    "remote URL": ("https://example.com/cat.png", {}, errors.MediaAccessError, "not fetched"),
    "missing file": ("/nonexistent/dir/cat.png", {}, errors.ImageError, "cannot read"),
    "wrong type": (12345, {}, errors.ImageError, "int"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_typed_error(case):
    source, kwargs, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message) as info:
        prepare_image(source, CONFIG, **kwargs)
    assert isinstance(info.value, errors.InputError)


def test_too_large_maps_to_413():
    with pytest.raises(errors.ImageTooLargeError) as info:
        prepare_image(png_header(100_000, 100_000), CONFIG)
    assert errors.http_status(info.value) == 413
