"""Documents as images: page selection, per-page resolution from a token budget, the document budget.

Contract (pure Python; no PDF library here, see `edge.vision.pdf` for rendering)
- `DocumentOptions` holds a request's document settings. Pages are numbered from 1. A selection is
  either `pages` ("1-3,5", "7-" = 7 to the end) or `first_page`/`last_page` (inclusive, either may be
  left out), never both; duplicates are dropped and pages always come in document order.
- `select_pages` refuses a selection of more than `max_pages` pages from the page count alone, so a
  document of thousands of pages is refused before anything is rendered (a range picks a few of them).
- `page_size(width_pt, height_pt, config, page_tokens)` is the rendered size in pixels: the page is
  scaled to about `page_tokens` merged blocks, then put through the model's own `smart_resize` with
  that budget as its pixel maximum, so the result is a multiple of `config.factor` on both sides and
  rows * cols <= page_tokens (the budget beats the preprocessor's minimum, as in `plan_size`). A page
  rendered at exactly this size and preprocessed with `max_tokens=n_tokens` is not resampled again
  (smart_resize returns the size unchanged); without a budget too, unless the page is under the
  preprocessor's minimum pixels (tiny per-page budgets), which smart_resize would scale up.
- `plan_document` applies `token_allowance` (total image tokens for all selected pages): when the pages
  do not fit it raises DocumentBudgetError saying how many pages fit at the asked budget and at which
  lower per-page budget all of them would; with `min_page_tokens` (opt-in) it lowers the per-page budget,
  not below that floor, instead of refusing.
- Page dimensions are checked in PDF points: finite, each side 3..14400 (PDF's own implementation
  limits) and an aspect ratio within the model's 200:1.

How the model is told page numbers: the checkpoint's chat template knows text, image and video parts
only (a `file` part must be expanded before rendering, or it is refused/dropped) and renders each image
as `<|begin_of_image|><|image|><|end_of_image|>` with nothing between consecutive images. Pages therefore
enter as consecutive image parts in document order and nothing is added when image k is page k (the whole
document or its first pages): that is exactly the prompt of the same pages sent as images. Only when the
selection skips pages (image k is not page k) does `page_note` give one plain sentence to put as a text
part before the first page image ("The following 3 images are pages 3-5 of a 12-page PDF."): without it
the model cannot know which pages it sees, and a text part is something the template renders as it is;
no per-page labels and no markup of our own.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from edge.errors import DocumentBudgetError, InputError, PageRangeError, PageSizeError, TooManyPagesError
from edge.vision.image import MAX_ASPECT_RATIO, ImageConfig, smart_resize

DEFAULT_PAGE_TOKENS = 1280  # about 100 dpi on an A4/Letter page (868 x 1148 px): 10-pt text stays legible
DEFAULT_MAX_PAGES = 200
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MIN_PAGE_SIDE_PT = 3.0  # PDF 32000-1 Annex C: page boundaries 3..14400 units
MAX_PAGE_SIDE_PT = 14400.0
RENDER_VERSION = 1  # part of every page cache key: bump when the rendering changes


@dataclass(frozen=True)
class DocumentOptions:
    """A request's document settings (see the module contract)."""

    page_tokens: int = DEFAULT_PAGE_TOKENS  # per-page budget in LLM tokens (merged rows x cols)
    pages: str | None = None  # "1-3,5", 1-based, inclusive
    first_page: int | None = None
    last_page: int | None = None
    max_pages: int = DEFAULT_MAX_PAGES
    token_allowance: int | None = None  # total image tokens for all selected pages; None: no limit
    min_page_tokens: int | None = None  # opt-in: lower page_tokens down to this to fit token_allowance
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class PagePlan:
    number: int  # 1-based
    width_pt: float  # as displayed (page rotation applied)
    height_pt: float
    width: int  # rendered pixels
    height: int
    rows: int  # merged blocks
    cols: int

    @property
    def n_tokens(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True, eq=False)
class RenderedPage:
    number: int  # 1-based page number in the document
    png: bytes  # RGB PNG of exactly width x height pixels
    width: int
    height: int
    rows: int  # merged rows x cols = n_tokens image tokens in the prompt
    cols: int
    n_tokens: int
    cache_key: str  # document sha256 + page + budget + size + renderer version
    width_pt: float  # the page as displayed, in points (what the size was planned from)
    height_pt: float


@dataclass(frozen=True, eq=False)
class RenderedDocument:
    sha256: str  # of the PDF bytes
    page_count: int  # pages in the document
    page_tokens: int  # per-page budget used (lower than asked only with min_page_tokens)
    pages: tuple[RenderedPage, ...]  # the selected pages, in document order

    @property
    def n_tokens(self) -> int:
        return sum(p.n_tokens for p in self.pages)


def _positive(name: str, value, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def token_limits(config: ImageConfig) -> tuple[int, int]:
    """(lowest, highest) per-page budget in tokens that the preprocessor's pixel bounds allow."""
    return math.ceil(config.min_pixels / config.pixels_per_token), config.max_pixels // config.pixels_per_token


def validate_options(options: DocumentOptions, config: ImageConfig) -> None:
    """Refuse settings that are malformed or outside the preprocessor's bounds, before reading the file."""
    for name in ("page_tokens", "max_pages", "max_bytes"):
        _positive(name, getattr(options, name), optional=False)
    for name in ("first_page", "last_page", "token_allowance", "min_page_tokens"):
        _positive(name, getattr(options, name))
    lo, hi = token_limits(config)
    for name in ("page_tokens", "min_page_tokens"):
        value = getattr(options, name)
        if value is not None and not lo <= value <= hi:
            raise InputError(f"{name} is {value}; the model's preprocessor allows {lo}..{hi} tokens per page")
    if options.min_page_tokens is not None and options.min_page_tokens > options.page_tokens:
        raise InputError(f"min_page_tokens {options.min_page_tokens} is above page_tokens {options.page_tokens}")
    if options.pages is not None and (options.first_page is not None or options.last_page is not None):
        raise PageRangeError("give either pages (\"1-3,5\") or first_page/last_page, not both")
    if options.pages is not None and not isinstance(options.pages, str):
        raise PageRangeError(f"pages must be a string like \"1-3,5\", got {type(options.pages).__name__}")


_PART = re.compile(r"^\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?$")


def select_pages(page_count: int, options: DocumentOptions) -> tuple[int, ...]:
    """Selected 1-based page numbers in document order; refuses a selection over max_pages."""
    if options.pages is not None:
        chosen: set[int] = set()
        for part in options.pages.split(","):
            m = _PART.match(part)
            if not m:
                raise PageRangeError(f"page range {options.pages!r}: cannot read {part.strip()!r}; "
                                     "use numbers from 1 and ranges like \"1-3,5,8-\"")
            first = int(m[1])
            last = first if not m[2] else int(m[3]) if m[3] else page_count
            if first < 1 or last < first:
                raise PageRangeError(f"page range {options.pages!r}: {part.strip()!r} is empty or starts below 1")
            if first > page_count or last > page_count:
                raise PageRangeError(f"page range {options.pages!r} asks for page {max(first, last)} but the "
                                     f"document has {page_count} pages")
            if last - first + 1 > options.max_pages:  # never build a huge set from "1-99999999"
                raise TooManyPagesError(f"{last - first + 1} pages selected; at most {options.max_pages} "
                                        "are rendered per request")
            chosen.update(range(first, last + 1))
        numbers = tuple(sorted(chosen))
    else:
        first = options.first_page or 1
        last = options.last_page or page_count
        if first > page_count or last > page_count or first > last:
            raise PageRangeError(f"pages {first}..{last} asked but the document has {page_count} pages "
                                 "(first_page <= last_page <= page count)")
        numbers = range(first, last + 1)  # not materialised before the count is checked
    if len(numbers) > options.max_pages:
        whole = options.pages is None and options.first_page is None and options.last_page is None
        hint = f"; choose a page range (e.g. pages=\"1-{options.max_pages}\")" if whole else ""
        raise TooManyPagesError(f"{len(numbers)} pages selected (the document has {page_count}); "
                                f"at most {options.max_pages} are rendered per request{hint}")
    return tuple(numbers)


def check_page_dimensions(number: int, width_pt: float, height_pt: float) -> None:
    """Refuse a page whose size in points is not finite, outside 3..14400 or over 200:1."""
    ok = all(math.isfinite(v) and MIN_PAGE_SIDE_PT <= v <= MAX_PAGE_SIDE_PT for v in (width_pt, height_pt))
    if ok and max(width_pt, height_pt) / min(width_pt, height_pt) <= MAX_ASPECT_RATIO:
        return
    raise PageSizeError(f"page {number} is {width_pt:g} x {height_pt:g} pt; pages must be "
                        f"{MIN_PAGE_SIDE_PT:g}..{MAX_PAGE_SIDE_PT:g} pt on each side with an aspect ratio "
                        f"of at most {MAX_ASPECT_RATIO}:1")


def page_size(width_pt: float, height_pt: float, config: ImageConfig, page_tokens: int) -> tuple[int, int]:
    """Rendered (width, height) in pixels for a page within `page_tokens` (see the module contract)."""
    f = config.factor
    scale = math.sqrt(page_tokens * f * f / (width_pt * height_pt))
    w, h = max(1, round(width_pt * scale)), max(1, round(height_pt * scale))
    hi = page_tokens * config.pixels_per_token
    kw = dict(factor=f, max_pixels=hi, temporal_factor=config.temporal_patch_size)
    h0, w0 = h, w
    h, w = smart_resize(h0, w0, min_pixels=min(config.min_pixels, hi), **kw)
    if (h // f) * (w // f) > page_tokens:  # rounding up to the minimum passed the budget: the budget wins
        h, w = smart_resize(h0, w0, min_pixels=1, **kw)
    if (h // f) * (w // f) > page_tokens:  # only at extreme aspect ratios with a small budget
        raise PageSizeError(f"a {width_pt:g} x {height_pt:g} pt page needs at least {(h // f) * (w // f)} tokens "
                            f"({w // f} x {h // f} blocks) at its aspect ratio; the per-page budget is {page_tokens}")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:  # whole blocks can stretch a near-200:1 page past the limit
        raise PageSizeError(f"a {width_pt:g} x {height_pt:g} pt page renders at {w} x {h} pixels in whole "
                            f"{f}-pixel blocks, over the model's {MAX_ASPECT_RATIO}:1; a larger per-page budget "
                            "gives the short side more blocks")
    return w, h


def plan_pages(sizes: list[tuple[int, float, float]], config: ImageConfig, page_tokens: int) -> list[PagePlan]:
    """Plans for (number, width_pt, height_pt) pages at one per-page budget."""
    out = []
    for number, wpt, hpt in sizes:
        w, h = page_size(wpt, hpt, config, page_tokens)
        out.append(PagePlan(number, wpt, hpt, w, h, h // config.factor, w // config.factor))
    return out


def plan_document(sizes: list[tuple[int, float, float]], config: ImageConfig,
                  options: DocumentOptions) -> tuple[int, list[PagePlan]]:
    """(per-page budget used, plans) for the selected pages within the document allowance."""
    for number, wpt, hpt in sizes:
        check_page_dimensions(number, wpt, hpt)
    budget = options.page_tokens
    plans = plan_pages(sizes, config, budget)
    needed = sum(p.n_tokens for p in plans)
    allowance = options.token_allowance
    if allowance is None or needed <= allowance:
        return budget, plans
    fit_budget = _largest_fitting_budget(sizes, config, token_limits(config)[0], budget - 1, allowance)
    if options.min_page_tokens is not None and fit_budget is not None and fit_budget >= options.min_page_tokens:
        return fit_budget, plan_pages(sizes, config, fit_budget)
    running, fit_pages = 0, 0
    for p in plans:
        running += p.n_tokens
        if running > allowance:
            break
        fit_pages += 1
    raise DocumentBudgetError(len(plans), budget, needed, allowance, fit_pages, fit_budget, options.min_page_tokens)


def _largest_fitting_budget(sizes, config, lo: int, hi: int, allowance: int) -> int | None:
    """Largest per-page budget in lo..hi whose pages fit the allowance (binary search; the total grows
    with the budget, and the answer is checked), or None."""

    def total(b: int) -> int | None:
        try:
            return sum(p.n_tokens for p in plan_pages(sizes, config, b))
        except PageSizeError:
            return None

    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        t = total(mid)
        if t is None:  # too small for some page's aspect ratio: only larger budgets can work
            lo = mid + 1
        elif t <= allowance:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def page_cache_key(document_sha256: str, number: int, page_tokens: int, width: int, height: int,
                   renderer: str) -> str:
    """Key of one rendered page: equal keys mean equal PNG bytes."""
    text = f"{document_sha256}|page {number}|budget {page_tokens}|{width}x{height}|{renderer}|v{RENDER_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()


def _spans(numbers: list[int]) -> str:
    spans, start = [], numbers[0]
    for prev, cur in zip(numbers, numbers[1:] + [None], strict=True):
        if cur != prev + 1:
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(spans)


def page_note(document: RenderedDocument) -> str | None:
    """The one sentence to put before the page images when image k is not page k, else None."""
    numbers = [p.number for p in document.pages]
    if not numbers or numbers == list(range(1, len(numbers) + 1)):
        return None
    what = "image is page" if len(numbers) == 1 else f"{len(numbers)} images are pages"
    return f"The following {what} {_spans(numbers)} of a {document.page_count}-page PDF."
