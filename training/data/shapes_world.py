"""ShapesWorld scene model, text lexicon and image rendering.

This module holds the parts of ShapesWorld that do not depend on any dataset format (those live
in :mod:`training.data.shapes`):

* the vocabulary of the world: :data:`SHAPES`, :data:`COLORS`, :data:`SIZES`;
* seeded randomness: :func:`derive_seed` / :func:`make_rng` turn ``(seed, dataset, split, index,
  ...)`` into an independent generator, so no global RNG state is ever used;
* the scene model (:class:`Obj`, :class:`Background`, :class:`Scene`, signs and text runs), scene
  samplers, and the referring-expression helpers (unique descriptions, spatial relations) that the
  question generators rely on;
* the TextVQA lexicon (:data:`LEXICON`, split into :data:`TRAIN_WORDS` / :data:`HELDOUT_WORDS`);
* rendering: :class:`RenderJob` is a picklable, fully specified image (every random choice,
  including the pixel-noise seed, is made in the main process), and :func:`render_jobs` is the
  top-level, spawn-safe worker function that draws the jobs and writes them as JPEG files.

Contract: rendering is a pure function of the job, so the same job gives the same bytes in any
process, and the text extents used for OCR boxes (computed in the main process with
:func:`get_font`) are exactly the extents drawn by the workers (same embedded FreeType font).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "pentagon", "hexagon", "diamond",
)
# Base fill colours. They are far apart in RGB and all much brighter than the (dark) backgrounds,
# so a +-12 per-channel jitter never makes a colour name ambiguous.
COLORS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 50),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "white": (240, 240, 240),
    "gray": (140, 140, 140),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large")
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)
JPEG_QUALITY = 90  # fixed: part of the determinism contract
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down (anti-aliasing)


# --------------------------------------------------------------------------------------------
# Seeded randomness
# --------------------------------------------------------------------------------------------


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and machines (SHA-256 based)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def make_rng(*parts: object) -> random.Random:
    """An independent ``random.Random`` for e.g. ``(seed, dataset, split, index)``."""
    return random.Random(derive_seed(*parts))


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[:1] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + "s"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


# --------------------------------------------------------------------------------------------
# Scene model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """One shape. Coordinates are pixels of the final image; ``r`` is the circumradius."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    r: float
    rot: float  # degrees, small, so a square never looks like a diamond
    rgb: RGB  # jittered fill colour (the name is ``color``)


@dataclass(frozen=True)
class Background:
    """A dark-ish gradient with low-frequency 'cloud' texture and per-pixel noise.

    ``horizon`` > 0 splits the image at that relative height into an upper (wall) and a lower
    (table) region with their own gradients - used by the photo-like VizWiz scenes.
    """

    base: RGB
    end: RGB
    angle: float
    clouds: float
    noise: float
    noise_seed: int
    horizon: float = 0.0
    lower_base: RGB = (0, 0, 0)
    lower_end: RGB = (0, 0, 0)


@dataclass(frozen=True)
class Scene:
    size: int
    background: Background
    objects: tuple[Obj, ...]


@dataclass(frozen=True)
class TextRun:
    """One drawn word: ``text`` exactly as drawn at ``(x, y)`` (PIL 'la' anchor) with the
    embedded font at ``font_size``; ``bbox`` is its ink box in pixels (from the font metrics)."""

    text: str
    x: float
    y: float
    font_size: int
    rgb: RGB
    bbox: Box


@dataclass(frozen=True)
class Sign:
    """A coloured rectangle carrying 1-2 words. ``words`` are the lowercase word identities."""

    color: str
    rgb: RGB
    box: Box
    words: tuple[str, ...]
    runs: tuple[TextRun, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class PhotoFx:
    """Camera effects applied after drawing (VizWiz): blur radius (px), brightness factor,
    vignette strength (0..1) and sensor-noise sigma."""

    blur: float = 0.0
    brightness: float = 1.0
    vignette: float = 0.0
    sensor_noise: float = 0.0


@dataclass(frozen=True)
class RenderJob:
    """Everything needed to draw one image and where to write it (absolute path)."""

    path: str
    scene: Scene
    signs: tuple[Sign, ...] = ()
    texts: tuple[TextRun, ...] = ()
    fx: PhotoFx | None = None


def jitter_rgb(rng: random.Random, rgb: RGB, amount: int = 12) -> RGB:
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)
    return (r, g, b)


def sample_background(rng: random.Random, size: int) -> Background:
    """Random dark-ish base colour, a gradient, optional cloud texture and pixel noise.

    Contract: every channel stays <= ~95 before noise, so all object colours remain visible.
    """
    base = (rng.randint(8, 75), rng.randint(8, 75), rng.randint(8, 75))
    end_r, end_g, end_b = (min(90, max(0, c + rng.randint(-35, 35))) for c in base)
    style = rng.random()
    return Background(
        base=base,
        end=(end_r, end_g, end_b) if style > 0.2 else base,
        angle=rng.uniform(0.0, 2 * math.pi),
        clouds=rng.uniform(4.0, 14.0) if style > 0.45 else 0.0,
        noise=rng.uniform(1.5, 7.0),
        noise_seed=rng.getrandbits(63),
    )


def sample_photo_background(rng: random.Random) -> Background:
    """Wall-and-table background of the photo-like (VizWiz) scenes: mid-dark tones."""

    def tone() -> RGB:
        g = rng.randint(35, 100)
        return (
            min(110, max(0, g + rng.randint(-25, 25))),
            min(110, max(0, g + rng.randint(-25, 25))),
            min(110, max(0, g + rng.randint(-25, 25))),
        )

    wall, table = tone(), tone()
    return Background(
        base=wall,
        end=jitter_rgb(rng, wall, 20),
        angle=rng.uniform(0.0, 2 * math.pi),
        clouds=rng.uniform(3.0, 10.0),
        noise=rng.uniform(2.0, 6.0),
        noise_seed=rng.getrandbits(63),
        horizon=rng.uniform(0.35, 0.65) if rng.random() < 0.7 else 0.0,
        lower_base=table,
        lower_end=jitter_rgb(rng, table, 25),
    )


def _circle_hits_box(cx: float, cy: float, r: float, box: Box, margin: float) -> bool:
    nx = min(max(cx, box[0]), box[2])
    ny = min(max(cy, box[1]), box[3])
    return (cx - nx) ** 2 + (cy - ny) ** 2 < (r + margin) ** 2


def place_object(
    rng: random.Random,
    size: int,
    placed: Sequence[Obj],
    *,
    shape: str,
    color: str,
    obj_size: str,
    r: float,
    avoid: Sequence[Box] = (),
    tries: int = 60,
) -> Obj | None:
    """Place a shape of circumradius ``r`` fully inside the image, not overlapping ``placed``
    objects (circumcircles plus a margin) nor the ``avoid`` boxes; None if no room was found."""
    margin = max(2.0, 0.03 * size)
    lo, hi = r + 2, size - r - 2
    if hi <= lo:
        return None
    for _ in range(tries):
        cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if any((cx - o.cx) ** 2 + (cy - o.cy) ** 2 < (r + o.r + margin) ** 2 for o in placed):
            continue
        if any(_circle_hits_box(cx, cy, r, b, margin) for b in avoid):
            continue
        max_rot = 8.0 if shape in ("square", "diamond") else 14.0
        return Obj(
            shape=shape,
            color=color,
            size=obj_size,
            cx=round(cx, 2),
            cy=round(cy, 2),
            r=round(r, 2),
            rot=round(rng.uniform(-max_rot, max_rot), 2),
            rgb=jitter_rgb(rng, COLORS[color]),
        )
    return None


def object_radius(rng: random.Random, size: int, obj_size: str) -> float:
    """Small shapes are ~0.07 of the image side, large ones ~0.13 (ratio ~1.8, unambiguous)."""
    return size * (rng.uniform(0.062, 0.078) if obj_size == "small" else rng.uniform(0.118, 0.14))


def sample_objects(
    rng: random.Random, size: int, n: int, avoid: Sequence[Box] = ()
) -> tuple[Obj, ...]:
    """Up to ``n`` random non-overlapping shapes. A large shape that does not fit is retried
    as small; a shape that still does not fit is dropped (callers use the returned tuple)."""
    placed: list[Obj] = []
    for _ in range(n):
        shape, color = rng.choice(SHAPES), rng.choice(COLOR_NAMES)
        obj_size = rng.choice(SIZES)
        obj = place_object(
            rng, size, placed, shape=shape, color=color, obj_size=obj_size,
            r=object_radius(rng, size, obj_size), avoid=avoid,
        )
        if obj is None and obj_size == "large":
            obj = place_object(
                rng, size, placed, shape=shape, color=color, obj_size="small",
                r=object_radius(rng, size, "small"), avoid=avoid,
            )
        if obj is not None:
            placed.append(obj)
    return tuple(placed)


def sample_scene(rng: random.Random, size: int, n_min: int = 1, n_max: int = 6) -> Scene:
    """A ShapesWorld scene with ``n_min``..``n_max`` (uniform) non-overlapping shapes."""
    bg = sample_background(rng, size)
    objs: tuple[Obj, ...] = ()
    while len(objs) < n_min:
        objs = sample_objects(rng, size, rng.randint(n_min, n_max))
    return Scene(size=size, background=bg, objects=objs)


# --------------------------------------------------------------------------------------------
# Referring expressions and relations (the ground truth the question generators use)
# --------------------------------------------------------------------------------------------

ATTR_SUBSETS: tuple[tuple[str, ...], ...] = (
    ("shape",), ("color",), ("size",), ("color", "shape"), ("size", "shape"),
    ("size", "color"), ("size", "color", "shape"),
)


def describe(obj: Obj, attrs: Iterable[str]) -> str:
    """'large red circle', 'red object', 'small star' ... for the given attributes."""
    a = set(attrs)
    parts = [obj.size] if "size" in a else []
    if "color" in a:
        parts.append(obj.color)
    parts.append(obj.shape if "shape" in a else "object")
    return " ".join(parts)


def matches(o: Obj, ref: Obj, attrs: Iterable[str]) -> bool:
    return all(getattr(o, a) == getattr(ref, a) for a in attrs)


def description_table(objs: Sequence[Obj], exclude: str | None = None) -> list[list[str]]:
    """For every object, all descriptions of it (not using attribute ``exclude``) that match
    exactly one object of the scene. Contract: a described object is always uniquely
    identified."""
    out: list[list[str]] = [[] for _ in objs]
    for attrs in ATTR_SUBSETS:
        if exclude in attrs:
            continue
        keys = [tuple(getattr(o, a) for a in attrs) for o in objs]
        counts = Counter(keys)
        for i, o in enumerate(objs):
            if counts[keys[i]] == 1:
                out[i].append(describe(o, attrs))
    return out


def unique_descriptions(
    objs: Sequence[Obj], obj: Obj, exclude: str | None = None
) -> list[str]:
    """The unique descriptions of one object of ``objs`` (see :func:`description_table`)."""
    return description_table(objs, exclude)[next(i for i, o in enumerate(objs) if o is obj)]


def relation_margin(size: int) -> float:
    """Offsets smaller than this are 'ambiguous' and never asked about."""
    return 0.06 * size


# direction -> (axis, sign): 'left' means the object's centre is left of the reference's
DIRECTIONS: dict[str, tuple[str, int]] = {
    "left": ("cx", -1), "right": ("cx", 1), "above": ("cy", -1), "below": ("cy", 1),
}
DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}


def relation(a: Obj, b: Obj, direction: str, margin: float) -> bool | None:
    """True if ``a`` is clearly ``direction`` of ``b``, False if clearly not, None if the offset
    along that axis is within ``margin`` (ambiguous)."""
    axis, sign = DIRECTIONS[direction]
    d = (getattr(a, axis) - getattr(b, axis)) * sign
    if abs(d) <= margin:
        return None
    return d > 0


def unique_neighbor(objs: Sequence[Obj], ref: Obj, direction: str, margin: float) -> Obj | None:
    """The single object clearly ``direction`` of ``ref``; None when there are zero, several,
    or any object whose offset is ambiguous."""
    hits = []
    for o in objs:
        if o is ref:
            continue
        rel = relation(o, ref, direction, margin)
        if rel is None:
            return None
        if rel:
            hits.append(o)
    return hits[0] if len(hits) == 1 else None


def position_name(x: float, y: float, size: int) -> str:
    """Coarse position of a point: 'left', 'right', 'top', 'bottom' or 'middle'."""
    dx, dy = x - size / 2, y - size / 2
    if max(abs(dx), abs(dy)) < 0.15 * size:
        return "middle"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


# --------------------------------------------------------------------------------------------
# Lexicon (TextVQA sign words)
# --------------------------------------------------------------------------------------------

_COMMON_TEXT = """
    open exit stop sale coffee pizza hotel bank park city cafe bar taxi bus police school
    market store shop books music news bakery garden museum cinema theater station airport
    pharmacy library office center street road avenue north south east west welcome closed push
    pull entrance free new best fresh hot cold ice tea beer wine water juice milk bread cake
    fish burger grill kitchen house home club sport fitness yoga dance art gallery studio design
    print photo video game toys kids baby pets flowers farm food deli diner pub inn motel salon
    spa barber dental clinic hospital doctor lab tech data cloud phone mobile radio star moon
    sun sky gold silver king queen royal grand super mega ultra max pro plus first last main old
    big little happy lucky magic dream love peace life world global united central national
    public private union liberty victory river lake ocean beach island mountain valley forest
    express bistro tavern lounge market garage repair tires auto parking hall tower plaza court
    bridge harbor port ferry train metro tram subway ticket cash credit loans insurance realty
    homes rooms suites vacancy laundry cleaners tailor shoes boots jeans fashion outlet discount
    organic vegan bagels donuts tacos sushi noodles curry kebab pasta steak chicken wings"""
COMMON_WORDS: tuple[str, ...] = tuple(_COMMON_TEXT.split())

_ONSETS = (
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
    "br", "ch", "cl", "cr", "dr", "fl", "gl", "gr", "pl", "pr", "sh", "sl", "sp", "st", "th", "tr",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "oa", "oo", "ou", "ie")
_CODAS = ("", "", "", "n", "r", "s", "l", "m", "x", "nd", "st", "k")
LEXICON_SIZE = 12_000  # pseudo-words; plus the common words


def _build_lexicon() -> tuple[str, ...]:
    # A fixed generator (independent of the world seed): the lexicon is a constant of the world.
    rng = random.Random(0x5EED_1E71C0)
    words: set[str] = set()
    while len(words) < LEXICON_SIZE:
        n_syl = 2 if rng.random() < 0.6 else 3
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syl))
        w += rng.choice(_CODAS)
        # number words would be rewritten to digits by the official answer normalization
        if 4 <= len(w) <= 9 and w not in NUMBER_WORDS and w != "none":
            words.add(w)
    words.update(COMMON_WORDS)
    return tuple(sorted(words))


def _is_heldout(word: str) -> bool:
    # Common words are always train words; pseudo-words are split ~50/50 by a stable hash.
    return word not in _COMMON_SET and hashlib.md5(word.encode()).digest()[0] % 2 == 1


_COMMON_SET = frozenset(COMMON_WORDS)
LEXICON: tuple[str, ...] = _build_lexicon()
# Contract: train images only ever use TRAIN_WORDS on signs; val/test signs mostly use
# HELDOUT_WORDS, whose answers can therefore only be obtained by copying an OCR token.
TRAIN_WORDS: tuple[str, ...] = tuple(w for w in LEXICON if not _is_heldout(w))
HELDOUT_WORDS: tuple[str, ...] = tuple(w for w in LEXICON if _is_heldout(w))


def lexicon() -> tuple[str, ...]:
    """The TextVQA sign lexicon (>= 10,000 distinct lowercase tokens)."""
    return LEXICON


# --------------------------------------------------------------------------------------------
# Text layout (main process) - exact font extents, so OCR boxes match the pixels
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def get_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's embedded FreeType font (Aileron, Pillow >= 10.1): identical on every machine."""
    font = ImageFont.load_default(size=size)
    assert isinstance(font, ImageFont.FreeTypeFont), "Pillow >= 10.1 with FreeType is required"
    return font


def styled(word: str, style: str) -> str:
    if style == "upper":
        return word.upper()
    if style == "title":
        return word.capitalize()
    return word


def text_color_for(rgb: RGB) -> RGB:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (20, 20, 20) if lum > 125 else (245, 245, 245)


def _boxes_overlap(a: Box, b: Box, margin: float) -> bool:
    return not (
        a[2] + margin <= b[0] or b[2] + margin <= a[0]
        or a[3] + margin <= b[1] or b[3] + margin <= a[1]
    )


def make_run(word: str, x: float, y: float, font_size: int, rgb: RGB) -> TextRun:
    left, top, right, bottom = get_font(font_size).getbbox(word)
    return TextRun(word, x, y, font_size, rgb, (x + left, y + top, x + right, y + bottom))


def layout_sign(
    rng: random.Random,
    size: int,
    words: Sequence[str],
    color: str,
    occupied: Sequence[Box],
) -> Sign | None:
    """Lay out a sign of ``color`` carrying ``words`` (lowercase identities) somewhere not
    overlapping ``occupied``; the font is sized to the image (legible: >= 9 px) and shrunk, or
    the words stacked on two lines, until the text fits. None if there is no room."""
    style = rng.choices(("lower", "title", "upper"), weights=(4, 3, 3))[0]
    drawn = [styled(w, style) for w in words]
    min_fs = max(9, round(size * 0.075))
    start_fs = max(min_fs, round(size * rng.uniform(0.085, 0.12)))
    max_w = size * 0.9
    lines: list[list[str]] = [drawn]
    fs = start_fs
    while True:
        font = get_font(fs)
        pad_x = max(3, round(fs * 0.4))
        space = font.getlength(" ")
        widths = [sum(font.getlength(w) for w in line) + space * (len(line) - 1) for line in lines]
        if max(widths) + 2 * pad_x <= max_w:
            break
        if fs > min_fs:
            fs -= 1
        elif len(lines) == 1 and len(drawn) > 1:
            lines, fs = [[w] for w in drawn], start_fs
        else:
            return None
    ascent, descent = font.getmetrics()
    line_h = ascent + descent
    pad_y = max(2, round(fs * 0.25))
    w = math.ceil(max(widths) + 2 * pad_x)
    h = line_h * len(lines) + 2 * pad_y
    if w > size - 4 or h > size - 4:
        return None
    rgb = jitter_rgb(rng, COLORS[color], 8)
    ink = text_color_for(rgb)
    for _ in range(40):
        x0, y0 = rng.randint(2, size - w - 2), rng.randint(2, size - h - 2)
        box: Box = (x0, y0, x0 + w, y0 + h)
        if any(_boxes_overlap(box, b, 3) for b in occupied):
            continue
        runs = []
        for i, line in enumerate(lines):
            x = x0 + (w - widths[i]) / 2
            y = y0 + pad_y + i * line_h
            for word in line:
                runs.append(make_run(word, round(x, 2), y, fs, ink))
                x += font.getlength(word) + space
        return Sign(color, rgb, box, tuple(words), tuple(runs))
    return None


def layout_distractor(
    rng: random.Random, size: int, word: str, occupied: Sequence[Box]
) -> TextRun | None:
    """Small text printed directly on the background (not on a sign)."""
    fs = max(7, round(size * 0.06))
    font = get_font(fs)
    left, top, right, bottom = font.getbbox(word)
    if right + 4 >= size:
        return None
    shade = rng.randint(150, 225)
    for _ in range(30):
        x = rng.randint(2, size - math.ceil(right) - 2)
        y = rng.randint(0, size - math.ceil(bottom) - 2)
        box: Box = (x + left, y + top, x + right, y + bottom)
        if any(_boxes_overlap(box, b, 2) for b in occupied):
            continue
        return TextRun(word, x, y, fs, (shade, shade, shade), box)
    return None


# --------------------------------------------------------------------------------------------
# Rendering (worker processes)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    return xs, ys


@functools.lru_cache(maxsize=4)
def _radial(size: int) -> np.ndarray:
    """Squared distance from the image centre, 0 at the centre and 1 in the corners."""
    xs, ys = _grid(size)
    return ((xs - 0.5) ** 2 + (ys - 0.5) ** 2) / 0.5


def _gradient(base: RGB, end: RGB, angle: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = t - t.min()
    t = t / max(float(t.max()), 1e-6)
    b = np.asarray(base, np.float32)
    e = np.asarray(end, np.float32)
    return b + t[..., None] * (e - b)


def render_background(bg: Background, size: int) -> np.ndarray:
    """Float32 HxWx3 background (values may exceed 0..255 slightly; clipped by the caller)."""
    rng = np.random.default_rng(bg.noise_seed)
    xs, ys = _grid(size)
    img = _gradient(bg.base, bg.end, bg.angle, xs, ys)
    if bg.horizon > 0:
        lower = _gradient(bg.lower_base, bg.lower_end, bg.angle + 1.0, xs, ys)
        img = np.where((ys > bg.horizon)[..., None], lower, img)
    if bg.clouds > 0:
        k = max(4, size // 16)
        small = Image.fromarray(rng.standard_normal((k, k)).astype(np.float32))
        clouds = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
        img = img + clouds[..., None] * bg.clouds
    if bg.noise > 0:
        img = img + rng.standard_normal((size, size, 1), dtype=np.float32) * bg.noise
    return img


def shape_points(obj: Obj, scale: float = 1.0) -> list[tuple[float, float]]:
    """Polygon vertices of a (non-circle) shape, in pixels times ``scale``."""
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.r * scale
    rot = math.radians(obj.rot)

    def ring(n: int, start_deg: float, radii: Sequence[float]) -> list[tuple[float, float]]:
        pts = []
        for i in range(n):
            a = math.radians(start_deg) + rot + 2 * math.pi * i / n
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if obj.shape == "square":
        return ring(4, 45.0, [r * 0.92])
    if obj.shape == "triangle":
        return ring(3, -90.0, [r])
    if obj.shape == "pentagon":
        return ring(5, -90.0, [r])
    if obj.shape == "hexagon":
        return ring(6, 0.0, [r])
    if obj.shape == "star":
        return ring(10, -90.0, [r, r * 0.45])
    if obj.shape == "diamond":
        base = [(0.0, -r), (0.62 * r, 0.0), (0.0, r), (-0.62 * r, 0.0)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    raise ValueError(f"unknown shape {obj.shape!r}")


def _draw_objects(img: Image.Image, objects: Sequence[Obj]) -> Image.Image:
    size = img.size[0]
    k = SUPERSAMPLE
    layer = Image.new("RGBA", (size * k, size * k), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for obj in objects:
        fill = (*obj.rgb, 255)
        if obj.shape == "circle":
            cx, cy, r = obj.cx * k, obj.cy * k, obj.r * k * 0.95
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(shape_points(obj, k), fill=fill)
    small = layer.resize((size, size), Image.Resampling.BOX)  # premultiplied-alpha resample
    return Image.alpha_composite(img.convert("RGBA"), small).convert("RGB")


def _apply_fx(img: Image.Image, fx: PhotoFx, seed: int) -> Image.Image:
    if fx.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(fx.blur))
    if fx.brightness == 1.0 and fx.vignette == 0.0 and fx.sensor_noise == 0.0:
        return img
    size = img.size[0]
    arr = np.asarray(img, dtype=np.float32) * fx.brightness
    if fx.vignette > 0:
        arr = arr * (1.0 - fx.vignette * _radial(size))[..., None]
    if fx.sensor_noise > 0:
        rng = np.random.default_rng(seed)
        arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * fx.sensor_noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_image(job: RenderJob) -> Image.Image:
    """Draw a job: background, shapes (anti-aliased), signs and text, then camera effects."""
    scene = job.scene
    size = scene.size
    arr = render_background(scene.background, size)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if scene.objects:
        img = _draw_objects(img, scene.objects)
    if job.signs or job.texts:
        draw = ImageDraw.Draw(img)
        for sign in job.signs:
            border = tuple(max(0, c - 50) for c in sign.rgb)
            draw.rectangle(sign.box, fill=sign.rgb, outline=border)
            for run in sign.runs:
                draw.text((run.x, run.y), run.text, font=get_font(run.font_size), fill=run.rgb)
        for run in job.texts:
            draw.text((run.x, run.y), run.text, font=get_font(run.font_size), fill=run.rgb)
    if job.fx is not None:
        img = _apply_fx(img, job.fx, scene.background.noise_seed ^ 0x5A5A)
    return img


def render_jobs(jobs: Sequence[RenderJob]) -> int:
    """Worker entry point (top level, spawn-safe): render and write every job as JPEG.

    Directories must exist already (the main process creates them). Returns the count.
    """
    for job in jobs:
        render_image(job).save(job.path, format="JPEG", quality=JPEG_QUALITY)
    return len(jobs)
