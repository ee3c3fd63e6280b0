"""Grounding boxes in GLM-4.6V answers: `<|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|>`.

Coordinates are integers 0..1000 relative to the image's width and height (brackets vary: `[..]`, `[[..]]`,
`(..)`, two points, several boxes per tag). `find_boxes` returns them structured with a best-effort label
(the phrase before the box) and, given the original image size, pixel coordinates `v/1000 * size`. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

BOX_OPEN, BOX_CLOSE = "<|begin_of_box|>", "<|end_of_box|>"

@dataclass(frozen=True)
class Box:
    label: str  # best-effort phrase before the box on the same line
    box_1000: tuple[float, float, float, float]  # as written: x1, y1, x2, y2 in 0..1000
    box_px: tuple[float, float, float, float] | None  # on the original image, None without a size
    image_index: int | None  # which prompt image the box refers to (default: the last one)


_BOX_RE = re.compile(re.escape(BOX_OPEN) + r"(.*?)" + re.escape(BOX_CLOSE), re.S)
_GROUP_RE = re.compile(r"[\[(]([^\[\]()]*)[\])]")
_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")
_LIST_MARK = re.compile(r"^(?:[-*•]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?:[.;!?]\s+|[。；！？])")


def box_to_pixels(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """0..1000 box -> pixels on a width x height image: x * width / 1000, y * height / 1000."""
    x1, y1, x2, y2 = box
    return (x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000)


def _num(text: str) -> float:
    return float(text) if "." in text else int(text)


def _box_coords(inner: str) -> list[tuple[float, float, float, float]]:
    groups = [[_num(n) for n in _NUM_RE.findall(g)] for g in _GROUP_RE.findall(inner)]
    if not groups:
        groups = [[_num(n) for n in _NUM_RE.findall(inner)]]
    boxes: list[tuple[float, float, float, float]] = []
    point: list[float] | None = None  # ((x1,y1),(x2,y2)) written as two points
    for nums in groups:
        if len(nums) == 2:
            if point is None:
                point = nums
                continue
            nums, point = point + nums, None
        if nums and len(nums) % 4 == 0:
            boxes += [tuple(nums[i: i + 4]) for i in range(0, len(nums), 4)]
    return boxes


def _label(before: str) -> str:
    line = before.rsplit("\n", 1)[-1].strip()
    line = _LIST_MARK.sub("", line)
    line = _SENTENCE_END.split(line)[-1]
    return line.strip().strip("*_`\"'").strip(" \t:：-–—=,，(（").strip("*_`\"'").strip()


def find_boxes(
    text: str,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    image_index: int | None = None,
) -> list[Box]:
    """Boxes written as `<|begin_of_box|>...<|end_of_box|>` in `text`.

    `image_sizes`: (width, height) of each prompt image in order; boxes refer to `image_index`
    (default: the last image) and get `box_px` on that image's original size.
    """
    sizes = list(image_sizes or [])
    if image_index is None:
        image_index = len(sizes) - 1 if sizes else None
    elif not 0 <= image_index < len(sizes):
        raise ValueError(f"image_index {image_index} but the prompt has {len(sizes)} image sizes")
    size = sizes[image_index] if image_index is not None else None
    if size is not None and not (size[0] > 0 and size[1] > 0):
        raise ValueError(f"image size must be positive (width, height), got {size!r}")
    out: list[Box] = []
    last_end = 0
    for m in _BOX_RE.finditer(text):
        label = _label(text[last_end: m.start()])
        for box in _box_coords(m.group(1)):
            px = box_to_pixels(box, size[0], size[1]) if size is not None else None
            out.append(Box(label, box, px, image_index))
        last_end = m.end()
    return out
