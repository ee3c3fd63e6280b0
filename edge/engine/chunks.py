"""M-RoPE positions of GLM-4.6V prompts (pure functions; shared/docs/glm46v-flash.md section 6).

Text tokens take one position each (llama.cpp broadcasts it to the t/h/w sections). An image of
rows x cols merged tokens starting at P takes, for the token at (r, c), t=P, h=P+r, w=P+c, laid out
section-major with a fourth all-zero section; the text after it continues at P + max(rows, cols).
"""

from __future__ import annotations

import numpy as np


def image_positions(start: int, rows: int, cols: int) -> np.ndarray:
    """int32 [4, rows*cols]: t, h, w and zero sections for an image in raster order of its merged grid."""
    r, c = np.divmod(np.arange(rows * cols, dtype=np.int32), np.int32(cols))
    pos = np.zeros((4, rows * cols), dtype=np.int32)
    pos[0] = start
    pos[1] = start + r
    pos[2] = start + c
    return pos


def image_span(rows: int, cols: int) -> int:
    """How far an image advances the position counter: max(rows, cols), not its token count."""
    return max(rows, cols)
