"""ShapesWorld: a seeded synthetic world written in the official dataset formats.

The world
---------
Every image is a scene of coloured geometric shapes (see :mod:`training.data.shapes_world`):
7 shapes (circle, square, triangle, star, pentagon, hexagon, diamond), 8 colours (red, green,
blue, yellow, purple, orange, white, gray), 2 sizes (small/large), 1-6 non-overlapping objects at
random positions on a dark gradient/noise background. On top of this world five datasets are
generated, each in the official layout and file names, so the readers written for the real
downloads read them unchanged:

=========  =======================================================================================
dataset    files under ``OUT/<dataset>/``
=========  =======================================================================================
vqa2       ``v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json``,
           ``v2_mscoco_{train2014,val2014}_annotations.json``,
           ``{train2014,val2014,test2015}/COCO_<split>_%012d.jpg``. ~5 questions per image
           (attribute, existence, counting 0-6, spatial relations, comparisons) with 10 annotator
           answers (synonyms, spelling variants, disagreement); answers greedily balanced per
           question type. ``question_id = image_id * 1000 + k``; image ids unique over splits.
           test-dev2015 is a ~25% image subset of test2015, as in the real release.
textvqa    ``TextVQA_0.5.1_{train,val,test}.json``, ``TextVQA_Rosetta_OCR_v0.2_{train,val,test}
           .json``, ``train_images/<id>.jpg`` (train AND val), ``test_images/<id>.jpg``. Words
           on coloured signs (Pillow's embedded FreeType font) from :data:`LEXICON`; val/test
           signs mostly use held-out words, so their answers must be copied from OCR tokens.
           Noisy OCR: ~10% dropped tokens, ~10% character errors, small distractor text.
vizwiz     ``Annotations/{train,val,test}.json`` and ``{train,val,test}/VizWiz_<split>_%08d.jpg``.
           One main object per photo-like image, one question per image, 25% unanswerable
           (heavy blur, very dark, object cropped out of frame, or absent).
coco       ``annotations/captions_{train2014,val2014}.json`` and
           ``{train2014,val2014}/COCO_<split>_%012d.jpg``; 5 distinct captions per image.
           COCO captions have no test split: the test image count is NOT used for coco.
visdial    ``visdial_1.0_{train,val,test}.json``, ``visdial_1.0_val_dense_annotations.json``,
           ``visdial_1.0_train_dense_sample.json`` (one in ten training dialogs),
           images ``train2014/COCO_train2014_%012d.jpg``,
           ``VisualDialog_val2018/VisualDialog_val2018_%012d.jpg``,
           ``VisualDialog_test2018/VisualDialog_test2018_%012d.jpg``. A caption and 10 rounds;
           100 answer options per round; test dialogs have 1-10 rounds, options on the last.
           Each dialog's answerer keeps one style of wording (``ANSWER_STYLES``).
=========  =======================================================================================

Determinism contract: every random choice comes from a generator seeded by ``(seed, dataset,
split, index, ...)`` (never global RNG state); scenes and questions are generated sequentially in
the main process, images are rendered by a spawn-safe multiprocessing pool from fully specified
jobs; JSON is written with a fixed key order and ``separators=(",", ":")``, JPEG at a fixed
quality, with no timestamps. The same seed gives byte-identical files; another seed another world.

CLI::

    python -m training.data.shapes --out DIR [--seed 0] [--train-images 2000]
        [--val-images 500] [--test-images 500] [--image-size 128]
        [--datasets vqa2,textvqa,vizwiz,coco,visdial] [--workers K]

prints a JSON summary (counts per dataset and split, seconds). Python API: :func:`generate`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult
from pathlib import Path
from random import Random
from typing import Any

import numpy as np

# Annotator answers are grouped as the official evaluation groups them.
from models.processors.answers import normalize_answer
from training.data.shapes_world import (
    COLOR_NAMES,
    COLORS,
    COMMON_WORDS,
    DIRECTION_PHRASES,
    DIRECTIONS,
    HELDOUT_WORDS,
    LEXICON,
    SHAPES,
    SIZES,
    TRAIN_WORDS,
    Obj,
    PhotoFx,
    RenderJob,
    Scene,
    Sign,
    TextRun,
    article,
    derive_seed,
    description_table,
    jitter_rgb,
    layout_distractor,
    layout_sign,
    lexicon,
    make_rng,
    number_word,
    place_object,
    plural,
    position_name,
    relation,
    relation_margin,
    render_jobs,
    sample_background,
    sample_objects,
    sample_photo_background,
    sample_scene,
    unique_neighbor,
)

__all__ = ["ALL_DATASETS", "LEXICON", "generate", "lexicon", "main"]

ALL_DATASETS: tuple[str, ...] = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")
# Bumped whenever the same seed starts writing different files, so caches of generated worlds
# (bench/train.py's) know to regenerate. 2: VisDial answerer styles and train dense sample.
GENERATOR_VERSION = 2
SPLITS: tuple[str, ...] = ("train", "val", "test")
MIN_IMAGE_SIZE = 64
VQA_QUESTIONS_PER_IMAGE = 5
TEXTVQA_QUESTIONS_PER_IMAGE = 2
VISDIAL_ROUNDS = 10
VISDIAL_OPTIONS = 100
# VisDial v1.0 also ships dense relevance for one round of a sample of training dialogs
# (``visdial_1.0_train_dense_sample.json``, 2,000 dialogs, key ``relevance``): one in ten here.
TRAIN_DENSE_EVERY = 10
VIZWIZ_UNANSWERABLE_SHARE = 0.25
HELDOUT_SHARE = 0.8  # share of val/test sign words drawn from HELDOUT_WORDS (contract: >= 0.7)
OCR_DROP, OCR_CHAR_ERROR = 0.10, 0.10

Submit = Callable[[list[RenderJob]], None]


@dataclass(frozen=True)
class Config:
    seed: int
    counts: dict[str, int]  # images per split
    image_size: int


def write_json(path: Path, obj: object) -> None:
    """Compact, deterministic JSON (key order = construction order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # json.dumps (one shot) uses the C encoder; json.dump would stream through pure Python.
    path.write_text(json.dumps(obj, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Annotators: 10 answers per question with synonyms, surface variants and disagreement
# --------------------------------------------------------------------------------------------

_COLOR_SYNONYMS = {"gray": ("grey",), "purple": ("violet",)}
_COLOR_CONFUSIONS = {
    "red": ("orange", "purple"), "orange": ("red", "yellow"), "yellow": ("orange", "white"),
    "green": ("blue", "yellow"), "blue": ("purple", "green"), "purple": ("blue", "red"),
    "white": ("gray", "yellow"), "gray": ("white", "blue"),
}
_SHAPE_SYNONYMS = {
    "circle": ("round", "oval"), "square": ("rectangle",), "triangle": ("triangular",),
    "hexagon": ("hexagonal",), "diamond": ("rhombus",), "star": ("star shape",),
}
_SHAPE_CONFUSIONS = {
    "circle": ("hexagon", "pentagon"), "square": ("diamond", "hexagon"),
    "triangle": ("star", "diamond"), "star": ("triangle", "pentagon"),
    "pentagon": ("hexagon", "circle"), "hexagon": ("pentagon", "circle"),
    "diamond": ("square", "triangle"),
}
_OCR_CONFUSIONS = {
    "o": "0", "l": "1", "i": "l", "e": "c", "a": "o", "s": "5", "b": "h", "n": "m", "u": "v",
    "t": "f", "g": "q", "c": "e", "m": "rn", "O": "0", "I": "l", "S": "5", "B": "8", "E": "F",
}


def typo(rng: Random, word: str) -> str:
    """One human typing error (substitute, delete, swap or double a letter); differs from word."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(10):
        i = rng.randrange(len(word))
        op = rng.randrange(4)
        if op == 0:
            out = word[:i] + rng.choice(letters) + word[i + 1:]
        elif op == 1 and len(word) > 3:
            out = word[:i] + word[i + 1:]
        elif op == 2 and i + 1 < len(word):
            out = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        else:
            out = word[:i] + word[i] + word[i:]
        if out.lower() != word.lower() and out.strip():
            return out
    return word + "e"


def ocr_error(rng: Random, word: str) -> str:
    """One OCR character error: a visually confusable substitution or a dropped character."""
    spots = [i for i, ch in enumerate(word) if ch in _OCR_CONFUSIONS]
    if spots and rng.random() < 0.75:
        i = rng.choice(spots)
        return word[:i] + _OCR_CONFUSIONS[word[i]] + word[i + 1:]
    if len(word) > 2:
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1:]
    return word + "i"


def answer_space(
    canonical: str, kind: str, rng: Random, context: Sequence[str] = ()
) -> tuple[list[str], list[str], list[str]]:
    """(surface variants that normalize to ``canonical``, synonyms that do not, plausible wrong
    answers most plausible first). ``context``: drawn text forms (text) or guesses (unanswerable)
    or other sign texts."""
    if kind == "color":
        wrong = list(_COLOR_CONFUSIONS[canonical])
        wrong += [c for c in COLOR_NAMES if c != canonical and c not in wrong]
        return ([canonical.capitalize(), canonical + "."], list(_COLOR_SYNONYMS.get(canonical, ())),
                wrong)
    if kind == "shape":
        wrong = list(_SHAPE_CONFUSIONS[canonical])
        wrong += [s for s in SHAPES if s != canonical and s not in wrong]
        variants = [f"{article(canonical)} {canonical}", canonical.capitalize(), canonical + "."]
        return variants, list(_SHAPE_SYNONYMS.get(canonical, ())), wrong
    if kind == "number":
        n = int(canonical)
        word = number_word(n)
        variants = [word, word.capitalize(), canonical + "."] + (["none"] if n == 0 else [])
        wrong = [str(m) for d in (1, 2, 3, 4) for m in (n + d, n - d) if m >= 0]
        return variants, [], wrong
    if kind == "yesno":
        flip = "no" if canonical == "yes" else "yes"
        syn = ["yeah", "yep"] if canonical == "yes" else ["nope"]
        return [canonical.capitalize(), canonical + ".", canonical.upper()], syn, [
            flip, "maybe", "not sure"]
    if kind in ("size", "position"):
        others = list(SIZES) if kind == "size" else ["left", "right", "top", "bottom", "middle"]
        return [canonical.capitalize(), canonical + "."], [], [o for o in others if o != canonical]
    if kind == "text":
        words = canonical.split()
        variants = [*context[:1], canonical.capitalize(), canonical.title()]
        synonyms = words if len(words) > 1 else []
        wrong = [typo(rng, canonical) for _ in range(3)] + list(context[1:])
        wrong += ["unanswerable", typo(rng, canonical), "no text"]
        return variants, synonyms, wrong
    if kind == "unanswerable":
        return (["Unanswerable", "unanswerable."], ["unsuitable", "unsuitable image"],
                list(context) or list(COLOR_NAMES))
    raise ValueError(f"unknown answer kind {kind!r}")


_CONFIDENCES = ("yes", "maybe", "no")
_FILLERS = ("not sure", "i don't know", "no idea", "unanswerable", "can't tell")
_RANK_WEIGHTS = [1.0 / (j + 1) for j in range(64)]  # wrong answers: most plausible first


def annotate(
    rng: Random, canonical: str, kind: str, context: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """Ten ``(answer, answer_confidence)`` pairs from simulated annotators.

    Contract: the group of answers normalizing to ``canonical`` (size c) is strictly larger than
    any other normalized group, so the most frequent answer (multiple_choice_answer) is the
    canonical one. c is 8-10 for ~65% of questions, 5-7 for ~25%, and 3-4 (yes/no: 4-5) for the
    rest, so raw agreement ranges from 2 to 10 of 10 and the soft score matters.
    """
    variants, synonyms, wrong = answer_space(canonical, kind, rng, context)
    key = normalize_answer(canonical)
    syn_keyed = [(a, k) for a in synonyms if (k := normalize_answer(a)) != key]
    wrong_keyed = [(a, k) for a in dict.fromkeys(wrong) if (k := normalize_answer(a)) != key]
    mode = rng.random()
    if mode < 0.65:
        c = rng.choices((8, 9, 10), weights=(3, 4, 3))[0]
    elif mode < 0.9:
        c = rng.randint(5, 7)
    else:
        c = rng.randint(4, 5) if kind == "yesno" else rng.randint(3, 4)
    if kind == "unanswerable":
        c = max(c, 6)
    out: list[tuple[str, str]] = []
    for _ in range(c):
        text = rng.choice(variants) if variants and rng.random() < 0.2 else canonical
        out.append((text, rng.choices(_CONFIDENCES, weights=(88, 10, 2))[0]))
    groups: Counter[str] = Counter()  # sizes of the other normalized groups, each < c
    rest = 10 - c
    n_syn = rng.randint(0, min(rest, 2)) if syn_keyed else 0
    for i in range(rest):
        use_syn = i < n_syn
        pool = [p for p in (syn_keyed if use_syn else wrong_keyed) if groups[p[1]] < c - 1]
        if not pool:  # synonyms exhausted: fall back to wrong answers, then to fillers
            pool = [p for p in wrong_keyed if groups[p[1]] < c - 1] or [
                (a, a) for a in _FILLERS if a != key and groups[a] < c - 1]
        text, group = rng.choices(pool, weights=_RANK_WEIGHTS[:len(pool)])[0]
        groups[group] += 1
        weights = (70, 25, 5) if use_syn else (35, 45, 20)
        out.append((text, rng.choices(_CONFIDENCES, weights=weights)[0]))
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------------------------
# Question candidates and greedy answer balancing (VQA v2, shared by VisDial)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cand:
    """A question about a scene with its canonical answer."""

    question: str  # VQA style: lowercase, ends with '?'
    answer: str
    qtype: str  # VQA question_type (a question prefix)
    atype: str  # VQA answer_type: "yes/no" | "number" | "other"
    kind: str  # answer kind: color | shape | number | yesno | size | position


class Balancer:
    """Greedy answer balancing: among the candidates, pick an answer that has been chosen least
    often so far for that question type (ties broken at random), then a candidate with it."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)

    def pick(self, rng: Random, cands: Sequence[Cand]) -> Cand:
        best = min(self.counts[c.qtype][c.answer] for c in cands)
        answers = sorted({c.answer for c in cands if self.counts[c.qtype][c.answer] == best})
        answer = rng.choice(answers)
        choice = rng.choice([c for c in cands if c.answer == answer])
        self.counts[choice.qtype][choice.answer] += 1
        return choice


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _descs(objs: Sequence[Obj], exclude: str | None = None) -> list[list[str]]:
    return description_table(objs, exclude)


def fam_color(scene: Scene, rng: Random) -> list[Cand]:
    objs = scene.objects
    return [Cand(f"what color is the {rng.choice(d)}?", o.color, "what color is the", "other",
                 "color") for o, d in zip(objs, _descs(objs, "color")) if d]


def fam_shape(scene: Scene, rng: Random) -> list[Cand]:
    objs = scene.objects
    return [Cand(f"what shape is the {rng.choice(d)}?", o.shape, "what shape is the", "other",
                 "shape") for o, d in zip(objs, _descs(objs, "shape")) if d]


def fam_exist(scene: Scene, rng: Random) -> list[Cand]:
    """'is there a blue triangle?' (present combos -> yes, a few absent ones -> no), plus
    'is there a large star?' and 'are there any red squares?'."""
    objs = scene.objects
    out = []
    present_cs = {(o.color, o.shape) for o in objs}
    present_ss = {(o.size, o.shape) for o in objs}
    absent_cs = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in present_cs]
    absent_ss = [(z, s) for z in SIZES for s in SHAPES if (z, s) not in present_ss]
    for (c, s), ans in [(p, "yes") for p in sorted(present_cs)] + [
            (p, "no") for p in rng.sample(absent_cs, 3)]:
        art = article(c)
        out.append(Cand(f"is there {art} {c} {s}?", ans, "is there a" if art == "a" else
                        "is there", "yes/no", "yesno"))
    for (z, s), ans in [(p, "yes") for p in sorted(present_ss)] + [
            (p, "no") for p in rng.sample(absent_ss, 2)]:
        out.append(Cand(f"is there a {z} {s}?", ans, "is there a", "yes/no", "yesno"))
    for (c, s), ans in [(rng.choice(sorted(present_cs)), "yes"), (rng.choice(absent_cs), "no")]:
        out.append(Cand(f"are there any {c} {plural(s)}?", ans, "are there", "yes/no", "yesno"))
    return out


def fam_count(scene: Scene, rng: Random) -> list[Cand]:
    """Counting questions; answers 0..6."""
    objs = scene.objects
    out = [Cand(f"how many {rng.choice(('objects', 'shapes'))} are there?", str(len(objs)),
                "how many", "number", "number")]
    for c in COLOR_NAMES:
        n = sum(o.color == c for o in objs)
        out.append(Cand(f"how many {c} objects are there?", str(n), "how many", "number",
                        "number"))
    for s in SHAPES:
        n = sum(o.shape == s for o in objs)
        out.append(Cand(f"how many {plural(s)} are there?", str(n), "how many", "number",
                        "number"))
    for z in SIZES:
        n = sum(o.size == z for o in objs)
        out.append(Cand(f"how many {z} shapes are there?", str(n), "how many", "number",
                        "number"))
    for c, s in sorted({(o.color, o.shape) for o in objs}):
        n = sum(o.color == c and o.shape == s for o in objs)
        out.append(Cand(f"how many {c} {plural(s)} are there?", str(n), "how many", "number",
                        "number"))
    return out


def fam_spatial_what(scene: Scene, rng: Random) -> list[Cand]:
    """'what color is the object to the left of the green star?' (target unique)."""
    objs, m = scene.objects, relation_margin(scene.size)
    out = []
    for ref, descs in zip(objs, _descs(objs)):
        if not descs:
            continue
        for direction in DIRECTIONS:
            nb = unique_neighbor(objs, ref, direction, m)
            if nb is None:
                continue
            phrase = f"the object {rng.choice(DIRECTION_PHRASES[direction])} the " \
                f"{rng.choice(descs)}"
            out.append(Cand(f"what color is {phrase}?", nb.color, "what color is the", "other",
                            "color"))
            out.append(Cand(f"what shape is {phrase}?", nb.shape, "what shape is the", "other",
                            "shape"))
    return out


def fam_spatial_yn(scene: Scene, rng: Random) -> list[Cand]:
    """'is the red square above the blue circle?' (only clear offsets are asked)."""
    objs, m = scene.objects, relation_margin(scene.size)
    descs = _descs(objs)
    out = []
    for i, a in enumerate(objs):
        for j, b in enumerate(objs):
            if i == j or not descs[i] or not descs[j]:
                continue
            for direction in DIRECTIONS:
                rel = relation(a, b, direction, m)
                if rel is None:
                    continue
                q = f"is the {rng.choice(descs[i])} {rng.choice(DIRECTION_PHRASES[direction])} " \
                    f"the {rng.choice(descs[j])}?"
                out.append(Cand(q, _yn(rel), "is the", "yes/no", "yesno"))
    return out


def fam_compare_same(scene: Scene, rng: Random) -> list[Cand]:
    """'are the red circle and the blue star the same size?'"""
    objs = scene.objects
    out = []
    for attr in ("size", "color", "shape"):
        descs = _descs(objs, attr)
        for i in range(len(objs)):
            for j in range(i + 1, len(objs)):
                if descs[i] and descs[j]:
                    same = getattr(objs[i], attr) == getattr(objs[j], attr)
                    q = f"are the {rng.choice(descs[i])} and the {rng.choice(descs[j])} " \
                        f"the same {attr}?"
                    out.append(Cand(q, _yn(same), "are the", "yes/no", "yesno"))
    return out


def fam_compare_more(scene: Scene, rng: Random) -> list[Cand]:
    """'are there more circles than squares?' / 'are there more red objects than blue ones?'"""
    objs = scene.objects
    out = []
    shapes = sorted({o.shape for o in objs}) + rng.sample(SHAPES, 2)
    colors = sorted({o.color for o in objs}) + rng.sample(COLOR_NAMES, 2)
    for values, attr in ((shapes, "shape"), (colors, "color")):
        counts = {v: sum(getattr(o, attr) == v for o in objs) for v in values}
        for x in dict.fromkeys(values):
            for y in dict.fromkeys(values):
                if x == y or counts[x] + counts[y] == 0:
                    continue
                if attr == "shape":
                    q = f"are there more {plural(x)} than {plural(y)}?"
                else:
                    q = f"are there more {x} objects than {y} objects?"
                out.append(Cand(q, _yn(counts[x] > counts[y]), "are there", "yes/no", "yesno"))
    return out


def fam_where(scene: Scene, rng: Random) -> list[Cand]:
    """'where is the red circle?' -> left/right/top/bottom/middle (VisDial only)."""
    objs = scene.objects
    return [Cand(f"where is the {rng.choice(d)}?", position_name(o.cx, o.cy, scene.size),
                 "where is the", "other", "position") for o, d in zip(objs, _descs(objs)) if d]


def fam_size(scene: Scene, rng: Random) -> list[Cand]:
    """'what size is the red circle?' (VisDial only: two answers would break VQA balance)."""
    objs = scene.objects
    return [Cand(f"what size is the {rng.choice(d)}?", o.size, "what size is the", "other",
                 "size") for o, d in zip(objs, _descs(objs, "size")) if d]


Family = Callable[[Scene, Random], list[Cand]]
VQA_FAMILIES: dict[str, tuple[Family, float]] = {
    "attribute_color": (fam_color, 1.0),
    "attribute_shape": (fam_shape, 1.0),
    "existence": (fam_exist, 1.0),
    "counting": (fam_count, 1.3),
    "spatial_what": (fam_spatial_what, 0.9),
    "spatial_yesno": (fam_spatial_yn, 0.9),
    "compare_same": (fam_compare_same, 0.7),
    "compare_more": (fam_compare_more, 0.7),
}
VISDIAL_FAMILIES: dict[str, tuple[Family, float]] = {
    **VQA_FAMILIES,
    "where": (fam_where, 0.6),
    "size": (fam_size, 0.4),
}


def ask_questions(
    scene: Scene,
    rng: Random,
    balancer: Balancer,
    n: int,
    families: dict[str, tuple[Family, float]],
    *,
    reuse_families: bool = False,
) -> list[Cand]:
    """Up to ``n`` distinct questions: a family is drawn by weight, its candidates enumerated
    (once per scene) and the balancer picks one. Each family is used at most once unless
    ``reuse_families``, or unless the scene has too few families with candidates (e.g. two
    identical shapes), in which case used families are drawn again."""
    remaining = dict(families)
    used: dict[str, tuple[Family, float]] = {}
    enumerated: dict[str, list[Cand]] = {}  # each family is enumerated once per scene
    asked: set[str] = set()
    out: list[Cand] = []
    while len(out) < n and (remaining or used):
        if not remaining:  # fall back to drawing families again
            remaining, used, reuse_families = used, {}, True
        names = list(remaining)
        name = rng.choices(names, weights=[remaining[k][1] for k in names])[0]
        if name not in enumerated:
            enumerated[name] = remaining[name][0](scene, rng)
        cands = [c for c in enumerated[name] if c.question not in asked]
        if not cands or not reuse_families:
            family = remaining.pop(name)
            if len(cands) > 1:
                used[name] = family
        if cands:
            choice = balancer.pick(rng, cands)
            asked.add(choice.question)
            out.append(choice)
    return out


# --------------------------------------------------------------------------------------------
# VQA v2
# --------------------------------------------------------------------------------------------

VQA_INFO = {
    "description": "ShapesWorld synthetic data in the VQA v2 format", "url": "",
    "version": "2.0", "year": 2017, "contributor": "ShapesWorld (Pythia)",
    "date_created": "2017-04-26 17:00:00",
}
VQA_LICENSE = {
    "name": "Creative Commons Attribution 4.0 International License",
    "url": "http://creativecommons.org/licenses/by/4.0/",
}
VQA_SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015"}


def write_vqa2(root: Path, cfg: Config, submit: Submit) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    image_id = 0  # unique over all splits
    for split in SPLITS:
        sub = VQA_SUBTYPES[split]
        img_dir = root / sub
        img_dir.mkdir(parents=True, exist_ok=True)
        balancer = Balancer()
        questions: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        jobs: list[RenderJob] = []
        image_ids: list[int] = []
        for i in range(cfg.counts[split]):
            image_id += 1
            rng = make_rng(cfg.seed, "vqa2", split, i)
            scene = sample_scene(rng, cfg.image_size)
            jobs.append(RenderJob(str(img_dir / f"COCO_{sub}_{image_id:012d}.jpg"), scene))
            image_ids.append(image_id)
            cands = ask_questions(scene, rng, balancer, VQA_QUESTIONS_PER_IMAGE, VQA_FAMILIES)
            for k, cand in enumerate(cands):
                qid = image_id * 1000 + k
                questions.append({"question_id": qid, "image_id": image_id,
                                  "question": cand.question})
                if split == "test":
                    continue
                answers = annotate(rng, cand.answer, cand.kind)
                annotations.append({
                    "question_id": qid, "image_id": image_id, "question_type": cand.qtype,
                    "answer_type": cand.atype, "multiple_choice_answer": cand.answer,
                    "answers": [{"answer_id": j + 1, "answer": a, "answer_confidence": conf}
                                for j, (a, conf) in enumerate(answers)],
                })
        submit(jobs)
        _write_vqa_questions(root, sub, questions)
        if split != "test":
            write_json(root / f"v2_mscoco_{sub}_annotations.json", {
                "info": VQA_INFO, "data_type": "mscoco", "data_subtype": sub,
                "license": VQA_LICENSE, "annotations": annotations,
            })
        summary[split] = {"images": len(jobs), "questions": len(questions)}
        if split == "test":
            # test-dev2015: a ~25% subset of the test2015 images (as in the real release)
            pick = make_rng(cfg.seed, "vqa2", "test-dev")
            dev_ids = {iid for iid in image_ids if pick.random() < 0.25} or {image_ids[0]}
            dev = [q for q in questions if q["image_id"] in dev_ids]
            _write_vqa_questions(root, "test-dev2015", dev)
            summary["test-dev"] = {"images": len(dev_ids), "questions": len(dev)}
    return summary


def _write_vqa_questions(root: Path, subtype: str, questions: list[dict[str, Any]]) -> None:
    write_json(root / f"v2_OpenEnded_mscoco_{subtype}_questions.json", {
        "info": VQA_INFO, "task_type": "Open-Ended", "data_type": "mscoco",
        "data_subtype": subtype, "license": VQA_LICENSE, "questions": questions,
    })


# --------------------------------------------------------------------------------------------
# TextVQA
# --------------------------------------------------------------------------------------------


def pick_word(rng: Random, split: str) -> str:
    """A sign word. Contract: train uses only TRAIN_WORDS; val/test draw HELDOUT_SHARE of their
    words from HELDOUT_WORDS (never seen in train)."""
    if split != "train" and rng.random() < HELDOUT_SHARE:
        return rng.choice(HELDOUT_WORDS)
    return rng.choice(COMMON_WORDS) if rng.random() < 0.15 else rng.choice(TRAIN_WORDS)


def textvqa_scene(
    rng: Random, size: int, split: str
) -> tuple[Scene, tuple[Sign, ...], tuple[TextRun, ...]]:
    """Background, 1-3 signs (30% with two words), 0-2 distractor words, 0-2 small shapes."""
    bg = sample_background(rng, size)
    signs: list[Sign] = []
    occupied: list[tuple[float, float, float, float]] = []
    n_signs = rng.choices((1, 2, 3), weights=(4, 4, 2))[0]
    while not signs:
        for _ in range(n_signs):
            n_words = 2 if rng.random() < 0.3 else 1
            words = [pick_word(rng, split) for _ in range(n_words)]
            sign = layout_sign(rng, size, words, rng.choice(COLOR_NAMES), occupied)
            if sign is not None:
                signs.append(sign)
                occupied.append(sign.box)
        n_signs = 1
    texts: list[TextRun] = []
    for _ in range(rng.choice((0, 1, 1, 2))):
        run = layout_distractor(rng, size, pick_word(rng, split), occupied)
        if run is not None:
            texts.append(run)
            occupied.append(run.bbox)
    clutter = sample_objects(rng, size, rng.randint(0, 2), avoid=occupied)
    return Scene(size, bg, clutter), tuple(signs), tuple(texts)


def rosetta_ocr(
    rng: Random, size: int, signs: Sequence[Sign], texts: Sequence[TextRun]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Simulated Rosetta output in reading order: ~10% of words missed, ~10% with a character
    error, boxes (relative, within [0, 1]) from the drawn ink extents with +-1 px jitter."""
    runs = [r for s in signs for r in s.runs] + list(texts)
    line = max(1.0, size * 0.08)
    runs.sort(key=lambda r: (round(r.bbox[1] / line), r.bbox[0]))
    tokens: list[str] = []
    info: list[dict[str, Any]] = []
    for run in runs:
        if rng.random() < OCR_DROP:
            continue
        word = ocr_error(rng, run.text) if rng.random() < OCR_CHAR_ERROR else run.text
        x0, y0, x1, y1 = (min(size, max(0.0, v + rng.uniform(-1, 1))) for v in run.bbox)
        tokens.append(word)
        info.append({"word": word, "bounding_box": {
            "top_left_x": round(x0 / size, 6), "top_left_y": round(y0 / size, 6),
            "width": round(max(0.0, x1 - x0) / size, 6),
            "height": round(max(0.0, y1 - y0) / size, 6),
            "rotation": 0, "yaw": 0, "roll": 0, "pitch": 0,
        }})
    return tokens, info


@dataclass(frozen=True)
class TextCand:
    family: str
    question: str
    answer: str
    kind: str  # text | color
    sign: Sign


def textvqa_candidates(signs: Sequence[Sign], size: int) -> list[TextCand]:
    out: list[TextCand] = []
    colors = Counter(s.color for s in signs)
    texts = Counter(s.text for s in signs)
    for s in signs:
        if colors[s.color] == 1:
            out.append(TextCand("written", f"what is written on the {s.color} sign?", s.text,
                                "text", s))
            out.append(TextCand("written", f"what does the {s.color} sign say?", s.text, "text",
                                s))
            if len(s.words) == 2:
                out.append(TextCand("first_last", f"what is the first word on the {s.color} "
                                    "sign?", s.words[0], "text", s))
                out.append(TextCand("first_last", f"what is the last word on the {s.color} "
                                    "sign?", s.words[1], "text", s))
        if texts[s.text] == 1:
            out.append(TextCand("color_of", f"what color is the sign that says {s.text}?",
                                s.color, "color", s))
    if len(signs) == 1:
        s = signs[0]
        if len(s.words) == 1:
            out.append(TextCand("single", "what word is on the sign?", s.text, "text", s))
        out.append(TextCand("single", "what does the sign say?", s.text, "text", s))
    else:
        margin = 0.1 * size
        for name, key, sign_ in (("on the left", "cx", -1), ("on the right", "cx", 1),
                                 ("at the top", "cy", -1), ("at the bottom", "cy", 1)):
            ordered = sorted(signs, key=lambda s: sign_ * getattr(s, key), reverse=True)
            if sign_ * (getattr(ordered[0], key) - getattr(ordered[1], key)) > margin:
                out.append(TextCand("position", f"what does the sign {name} say?",
                                    ordered[0].text, "text", ordered[0]))
    return out


TEXTVQA_FAMILY_WEIGHTS = {"written": 3.0, "single": 2.5, "position": 2.0, "first_last": 1.0,
                          "color_of": 0.5}


def choose_text_questions(rng: Random, cands: Sequence[TextCand], n: int) -> list[TextCand]:
    by_family: dict[str, list[TextCand]] = defaultdict(list)
    for c in cands:
        by_family[c.family].append(c)
    out: list[TextCand] = []
    while by_family and len(out) < n:
        names = sorted(by_family)
        name = rng.choices(names, weights=[TEXTVQA_FAMILY_WEIGHTS[k] for k in names])[0]
        pool = [c for c in by_family.pop(name) if c.question not in {o.question for o in out}]
        if pool:
            out.append(rng.choice(pool))
    return out


def write_textvqa(root: Path, cfg: Config, submit: Submit) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    question_id = 0  # unique over all splits
    seen_ids: set[str] = set()
    for split in SPLITS:
        img_dir = root / ("test_images" if split == "test" else "train_images")
        img_dir.mkdir(parents=True, exist_ok=True)
        data: list[dict[str, Any]] = []
        ocr: list[dict[str, Any]] = []
        jobs: list[RenderJob] = []
        size = cfg.image_size
        for i in range(cfg.counts[split]):
            rng = make_rng(cfg.seed, "textvqa", split, i)
            image_id = f"{derive_seed(cfg.seed, 'textvqa-id', split, i):016x}"[-16:]
            while image_id in seen_ids:  # practically never; keeps ids unique by construction
                image_id = f"{derive_seed(image_id):016x}"[-16:]
            seen_ids.add(image_id)
            scene, signs, texts = textvqa_scene(rng, size, split)
            jobs.append(RenderJob(str(img_dir / f"{image_id}.jpg"), scene, signs, texts))
            tokens, info = rosetta_ocr(rng, size, signs, texts)
            ocr.append({"image_id": image_id, "ocr_tokens": tokens, "ocr_info": info})
            classes = ["Sign", "Text"] + (["Shape"] if scene.objects else [])
            for cand in choose_text_questions(rng, textvqa_candidates(signs, size),
                                              TEXTVQA_QUESTIONS_PER_IMAGE):
                entry: dict[str, Any] = {
                    "question_id": question_id, "question": cand.question,
                    "question_tokens": re.findall(r"[a-z0-9']+", cand.question.lower()),
                    "image_id": image_id, "image_classes": classes,
                    "image_width": size, "image_height": size,
                    "flickr_original_url": "", "flickr_300k_url": "", "set_name": split,
                }
                question_id += 1
                if split != "test":
                    entry["answers"] = [a for a, _ in annotate(
                        rng, cand.answer, cand.kind, _text_context(cand, signs))]
                data.append(entry)
        submit(jobs)
        write_json(root / f"TextVQA_0.5.1_{split}.json", {
            "dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1",
            "data": data,
        })
        write_json(root / f"TextVQA_Rosetta_OCR_v0.2_{split}.json", {
            "dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.2",
            "data": ocr,
        })
        summary[split] = {"images": len(jobs), "questions": len(data)}
    return summary


def _text_context(cand: TextCand, signs: Sequence[Sign]) -> list[str]:
    """For text answers: [the text as drawn on the sign, other sign texts (wrong answers)]."""
    if cand.kind != "text":
        return []
    drawn = " ".join(r.text for r in cand.sign.runs)
    if cand.answer != cand.sign.text:  # first/last word questions
        drawn = next((r.text for r in cand.sign.runs if r.text.lower() == cand.answer),
                     cand.answer)
    return [drawn] + [s.text for s in signs if s is not cand.sign]


# --------------------------------------------------------------------------------------------
# VizWiz
# --------------------------------------------------------------------------------------------

# why an image is unanswerable: heavy blur, very dark, object mostly out of frame, no object
VIZWIZ_CAUSES = ("blur", "dark", "crop", "absent")
VIZWIZ_GUESSES: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES, "shape": SHAPES, "count": ("1", "2", "0"), "yesno": ("no", "yes"),
}
VIZWIZ_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("what color is this?", "what color is this object?",
              "can you tell me what color this is?"),
    "shape": ("what shape is this?", "what is the shape of this object?"),
    "count": ("how many objects are there?", "how many things are in this picture?"),
    "yesno": ("is this {color}?", "is this object {color}?"),
}


def vizwiz_scene(
    rng: Random, size: int, cause: str | None
) -> tuple[Scene, PhotoFx, Obj | None, int]:
    """A photo-like scene: (scene, camera effects, main object or None, number of objects)."""
    bg = sample_photo_background(rng)
    shape, color = rng.choice(SHAPES), rng.choice(COLOR_NAMES)
    r = size * rng.uniform(0.2, 0.3)
    cx, cy = size * rng.uniform(0.38, 0.62), size * rng.uniform(0.38, 0.62)
    if cause == "crop":  # centre outside the frame: only a sliver of the object is visible
        out = -r * rng.uniform(0.3, 0.7)
        side = rng.randrange(4)
        cx = out if side == 0 else size - out if side == 1 else cx
        cy = out if side == 2 else size - out if side == 3 else cy
    main: Obj | None = Obj(shape, color, "large", round(cx, 2), round(cy, 2), round(r, 2),
                           round(rng.uniform(-14, 14), 2), jitter_rgb(rng, COLORS[color]))
    if cause == "absent":
        main = None
    objs: list[Obj] = [main] if main is not None else []
    if cause is None:
        for _ in range(rng.choice((0, 0, 1, 2, 3))):
            extra = place_object(rng, size, objs, shape=rng.choice(SHAPES),
                                 color=rng.choice(COLOR_NAMES), obj_size="small",
                                 r=size * rng.uniform(0.05, 0.075))
            if extra is not None:
                objs.append(extra)
    fx = PhotoFx(blur=rng.uniform(0.0, 0.8), brightness=rng.uniform(0.75, 1.15),
                 vignette=rng.uniform(0.0, 0.4), sensor_noise=rng.uniform(1.0, 4.0))
    if cause == "blur":
        fx = PhotoFx(blur=size * rng.uniform(0.05, 0.08), brightness=fx.brightness,
                     vignette=fx.vignette, sensor_noise=fx.sensor_noise)
    elif cause == "dark":
        fx = PhotoFx(blur=fx.blur, brightness=rng.uniform(0.05, 0.1), vignette=0.5,
                     sensor_noise=rng.uniform(3.0, 6.0))
    return Scene(size, bg, tuple(objs)), fx, main, len(objs)


def write_vizwiz(root: Path, cfg: Config, submit: Submit) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for split in SPLITS:
        img_dir = root / split
        img_dir.mkdir(parents=True, exist_ok=True)
        n = cfg.counts[split]
        # Exactly round(25%) unanswerable images per split, at seeded random positions.
        n_bad = round(n * VIZWIZ_UNANSWERABLE_SHARE)
        flags = [True] * n_bad + [False] * (n - n_bad)
        make_rng(cfg.seed, "vizwiz", split, "answerability").shuffle(flags)
        balancer = Balancer()
        records: list[dict[str, Any]] = []
        jobs: list[RenderJob] = []
        for i in range(n):
            rng = make_rng(cfg.seed, "vizwiz", split, i)
            cause = rng.choice(VIZWIZ_CAUSES) if flags[i] else None
            scene, fx, main, n_objs = vizwiz_scene(rng, cfg.image_size, cause)
            name = f"VizWiz_{split}_{i:08d}.jpg"
            jobs.append(RenderJob(str(img_dir / name), scene, fx=fx))
            family = rng.choice(sorted(VIZWIZ_TEMPLATES))
            template = rng.choice(VIZWIZ_TEMPLATES[family])
            if main is None or cause is not None:
                cand = Cand(template.format(color=rng.choice(COLOR_NAMES)), "unanswerable",
                            family, "unanswerable", "unanswerable")
                guesses = list(VIZWIZ_GUESSES[family])  # what a few annotators still answer
            else:
                cand = _vizwiz_cand(rng, balancer, family, template, main, n_objs)
                guesses = []
            record: dict[str, Any] = {"image": name, "question": cand.question}
            if split != "test":
                record["answers"] = [{"answer": a, "answer_confidence": conf}
                                     for a, conf in annotate(rng, cand.answer, cand.kind,
                                                             guesses)]
                record["answer_type"] = cand.atype
                record["answerable"] = 0 if cand.kind == "unanswerable" else 1
            records.append(record)
        submit(jobs)
        write_json(root / "Annotations" / f"{split}.json", records)
        summary[split] = {"images": n, "questions": len(records),
                          "unanswerable": n_bad}
    return summary


def _vizwiz_cand(rng: Random, balancer: Balancer, family: str, template: str, main: Obj,
                 n_objs: int) -> Cand:
    if family == "color":
        return Cand(template, main.color, "color", "other", "color")
    if family == "shape":
        return Cand(template, main.shape, "shape", "other", "shape")
    if family == "count":
        return Cand(template, str(n_objs), "count", "number", "number")
    others = [c for c in COLOR_NAMES if c != main.color]
    cands = [Cand(template.format(color=main.color), "yes", "yesno", "yes/no", "yesno")] + [
        Cand(template.format(color=c), "no", "yesno", "yes/no", "yesno")
        for c in rng.sample(others, 2)]
    return balancer.pick(rng, cands)


# --------------------------------------------------------------------------------------------
# COCO captions
# --------------------------------------------------------------------------------------------

_POSITION_TEXT = {
    "left": "on the left side of the image", "right": "on the right side of the image",
    "top": "near the top of the image", "bottom": "near the bottom of the image",
    "middle": "in the middle of the image",
}


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _a(obj: Obj, with_size: bool = False) -> str:
    words = ([obj.size] if with_size else []) + [obj.color, obj.shape]
    return f"{article(words[0])} {' '.join(words)}"


def caption_candidates(scene: Scene, rng: Random) -> list[str]:
    """Lowercase captions (no final period) true of the scene, from varied templates."""
    objs, size = scene.objects, scene.size
    n = len(objs)
    groups = Counter((o.color, o.shape) for o in objs)
    phrases = [f"{article(c)} {c} {s}" if k == 1 else f"{number_word(k)} {c} {plural(s)}"
               for (c, s), k in groups.items()]
    bg = rng.choice(("dark", "dark textured", "plain dark", "dim"))
    noun = "shape" if n == 1 else "shapes"
    be = "is" if n == 1 else "are"
    out: list[str] = []
    if len(phrases) <= 4:
        inv = _join(phrases)
        out += [f"{inv} on a {bg} background", f"a picture of {inv}", f"{inv} in an image"]
    out += [f"there {be} {number_word(n)} {noun} in the picture",
            f"an image with {number_word(n)} geometric {noun}"]
    colors = Counter(o.color for o in objs)
    if n > 1 and len(colors) > 1:
        out.append(f"{number_word(n)} shapes in {number_word(len(colors))} different colors")
        out.append(f"colorful geometric shapes on a {bg} background")
    m = relation_margin(size)
    pairs = [(a, b) for a in objs for b in objs if a is not b]
    rng.shuffle(pairs)
    n_rel = 0
    for a, b in pairs:
        if n_rel >= 2:
            break
        if relation(a, b, "left", m):
            out.append(f"{_a(a, True)} to the left of {_a(b, True)}")
            n_rel += 1
        elif relation(a, b, "above", m):
            out.append(f"{_a(a)} above {_a(b)}")
            n_rel += 1
    o = rng.choice(objs)
    out.append(f"{_a(o)} {_POSITION_TEXT[position_name(o.cx, o.cy, size)]}")
    larges = [x for x in objs if x.size == "large"]
    if len(larges) == 1 and n > 1:
        k = n - 1
        out.append(f"{_a(larges[0], True)} and {number_word(k)} smaller "
                   f"{'shape' if k == 1 else 'shapes'}")
    for c, k in sorted(colors.items()):
        if 0 < k < n and rng.random() < 0.5:
            rest = n - k
            out.append(f"{number_word(k)} {c} {'object' if k == 1 else 'objects'} and "
                       f"{number_word(rest)} other {'shape' if rest == 1 else 'shapes'}")
    if n == 1:
        out += [f"a single {objs[0].size} {objs[0].color} {objs[0].shape} on a {bg} background",
                f"a lone {objs[0].color} {objs[0].shape}"]
    else:
        out.append(f"{_a(o)} among other shapes")
    return list(dict.fromkeys(out))


def coco_captions(scene: Scene, rng: Random, k: int = 5) -> list[str]:
    """``k`` distinct captions (distinct even after lowercasing), COCO-style capitalization."""
    cands = caption_candidates(scene, rng)
    rng.shuffle(cands)
    out = []
    for c in cands[:k]:
        if rng.random() < 0.7:
            c = c[0].upper() + c[1:]
        out.append(c + "." if rng.random() < 0.5 else c)
    assert len(out) == k, "caption templates must always yield >= 5 captions"
    return out


COCO_INFO = {
    "description": "ShapesWorld synthetic captions in the COCO 2014 format", "url": "",
    "version": "1.0", "year": 2014, "contributor": "ShapesWorld (Pythia)",
    "date_created": "2015-01-27 09:11:52.357475",
}
COCO_LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
     "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nc/2.0/", "id": 2,
     "name": "Attribution-NonCommercial License"},
    {"url": "http://creativecommons.org/licenses/by-nc-nd/2.0/", "id": 3,
     "name": "Attribution-NonCommercial-NoDerivs License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {"url": "http://creativecommons.org/licenses/by-sa/2.0/", "id": 5,
     "name": "Attribution-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nd/2.0/", "id": 6,
     "name": "Attribution-NoDerivs License"},
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
    {"url": "http://www.usa.gov/copyright.shtml", "id": 8, "name": "United States Government Work"},
]


def write_coco(root: Path, cfg: Config, submit: Submit) -> dict[str, Any]:
    """COCO captions for train2014 and val2014 only; the test image count is not used."""
    summary: dict[str, Any] = {}
    image_id = 0  # unique over splits
    ann_id = 0  # unique over splits
    for split in ("train", "val"):
        sub = VQA_SUBTYPES[split]
        img_dir = root / sub
        img_dir.mkdir(parents=True, exist_ok=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        jobs: list[RenderJob] = []
        for i in range(cfg.counts[split]):
            image_id += 1
            rng = make_rng(cfg.seed, "coco", split, i)
            scene = sample_scene(rng, cfg.image_size)
            name = f"COCO_{sub}_{image_id:012d}.jpg"
            jobs.append(RenderJob(str(img_dir / name), scene))
            captured = (f"2013-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                        f"{rng.randint(0, 59):02d}")
            images.append({"id": image_id, "file_name": name, "height": cfg.image_size,
                           "width": cfg.image_size, "license": rng.randint(1, 8),
                           "date_captured": captured})
            for caption in coco_captions(scene, rng):
                ann_id += 1
                annotations.append({"image_id": image_id, "id": ann_id, "caption": caption})
        submit(jobs)
        write_json(root / "annotations" / f"captions_{sub}.json", {
            "info": COCO_INFO, "licenses": COCO_LICENSES, "images": images,
            "annotations": annotations,
        })
        summary[split] = {"images": len(images), "captions": len(annotations)}
    summary["test"] = "not generated: COCO captions have no test split (test count unused)"
    return summary


# --------------------------------------------------------------------------------------------
# VisDial
# --------------------------------------------------------------------------------------------

Meaning = tuple[str, str, bool]  # (kind, value, hedged)
# Every unhedged answer has several surface forms, all of them among a round's 100 options
# (NDCG rewards ranking them all high). Which one is the ground truth is the answerer's style:
# one per dialog, as a person answers in their own words, so from round 2 on the history shows
# it. Each forms tuple below holds distinct strings ordered by style (terse, formal, casual,
# descriptive), so one earlier answer tells the style (a count of 1 has a fifth form that no
# style uses, a distractor of the same meaning). Were the form drawn anew for every answer, no
# model could tell which of the equivalent options is the ground truth: the best expected MRR
# would be about 0.45.
ANSWER_STYLES: tuple[str, ...] = ("terse", "formal", "casual", "descriptive")
_YES_FORMS = {
    "is there": ("yes", "yes there is", "yep", "yes, there is one"),
    "is the": ("yes", "yes it is", "yeah it is", "yes, it is"),
    "are the": ("yes", "yes they are", "yeah they are", "yes, they are"),
    "are there": ("yes", "yes there are", "yeah", "yes, there are some"),
}
_NO_FORMS = {
    "is there": ("no", "no there isn't", "nope", "no, there is none"),
    "is the": ("no", "no, it is not", "no it isn't", "no, it's not"),
    "are the": ("no", "no they are not", "no, they aren't", "nope, they are not"),
    "are there": ("no", "no there are not", "nope", "no, there are none"),
}
_POSITION_FORMS = {
    "left": ("on the left", "it is on the left", "left side", "to the left"),
    "right": ("on the right", "it is on the right", "right side", "to the right"),
    "top": ("at the top", "it is near the top", "up top", "top of the image"),
    "bottom": ("at the bottom", "it is near the bottom", "down at the bottom",
               "bottom of the image"),
    "middle": ("in the middle", "it is in the center", "center", "in the center of the image"),
}


def _number_forms(n: int) -> tuple[str, ...]:
    if n == 0:
        return ("0", "there are none", "none", "zero")
    if n == 1:
        return ("1", "there is 1", "just 1", "one", "only one")
    return (str(n), f"there are {n}", f"i see {n}", number_word(n))


def _color_forms(c: str) -> tuple[str, ...]:
    return (c, f"it is {c}", f"it's {c}", f"{c} color")


def _shape_forms(s: str) -> tuple[str, ...]:
    return (s, f"it is a {s}", f"it's a {s}", f"a {s}")


_SIZE_FORMS = {"small": ("small", "it is small", "it's small", "pretty small"),
               "large": ("large", "it is large", "it's big", "big")}


def _build_answer_pool() -> dict[str, Meaning]:
    """Every VisDial answer string with its meaning; options are drawn from this pool."""
    pool: dict[str, Meaning] = {}

    def add(forms: Iterable[str], kind: str, value: str, hedged: bool = False) -> None:
        for f in forms:
            pool.setdefault(f, (kind, value, hedged))

    for forms in _YES_FORMS.values():
        add(forms, "yesno", "yes")
    for forms in _NO_FORMS.values():
        add(forms, "yesno", "no")
    add(("i think so", "probably", "i think yes"), "yesno", "yes", True)
    add(("i don't think so", "probably not"), "yesno", "no", True)
    add(("i can't tell", "not sure", "hard to say", "i don't know"), "unknown", "unknown")
    for n in range(9):
        add(_number_forms(n), "number", str(n))
        if n:
            add((f"about {n}", f"maybe {n}"), "number", str(n), True)
    for c in COLOR_NAMES:
        add(_color_forms(c), "color", c)
        add((f"i think it's {c}", f"maybe {c}"), "color", c, True)
    for s in SHAPES:
        add(_shape_forms(s), "shape", s)
        add((f"looks like a {s}", f"i think it's a {s}"), "shape", s, True)
    for z, forms in _SIZE_FORMS.items():
        add(forms, "size", z)
    for pos, forms in _POSITION_FORMS.items():
        add(forms, "position", pos)
    return pool


ANSWER_POOL: dict[str, Meaning] = _build_answer_pool()
ANSWER_LIST: list[str] = sorted(ANSWER_POOL)  # data.answers of every split
ANSWER_INDEX: dict[str, int] = {a: i for i, a in enumerate(ANSWER_LIST)}
_POOL_BY_KIND: dict[str, list[str]] = defaultdict(list)
for _answer in ANSWER_LIST:
    _POOL_BY_KIND[ANSWER_POOL[_answer][0]].append(_answer)


def styled_form(forms: Sequence[str], style: int) -> str:
    """The form of ``forms`` (ordered as :data:`ANSWER_STYLES`) that answerer ``style`` uses."""
    return forms[style]


def answer_forms(cand: Cand) -> tuple[str, ...]:
    """The unhedged surface forms of a candidate's answer, in :data:`ANSWER_STYLES` order."""
    if cand.kind == "yesno":
        prefix = "is there" if cand.qtype.startswith("is there") else cand.qtype
        return (_YES_FORMS if cand.answer == "yes" else _NO_FORMS)[prefix]
    if cand.kind == "number":
        return _number_forms(int(cand.answer))
    if cand.kind == "color":
        return _color_forms(cand.answer)
    if cand.kind == "shape":
        return _shape_forms(cand.answer)
    return (_POSITION_FORMS if cand.kind == "position" else _SIZE_FORMS)[cand.answer]


def dialog_answer(cand: Cand, style: int) -> str:
    """The conversational, unhedged answer of answerer ``style`` (an index into
    :data:`ANSWER_STYLES`) to a candidate, e.g. 'no, it is not'."""
    return styled_form(answer_forms(cand), style)


_KIND_IDS: dict[str, np.ndarray] = {
    k: np.array([ANSWER_INDEX[a] for a in v], dtype=np.int64) for k, v in _POOL_BY_KIND.items()}
_OTHER_IDS: dict[str, np.ndarray] = {
    k: np.array([i for i, a in enumerate(ANSWER_LIST) if ANSWER_POOL[a][0] != k], dtype=np.int64)
    for k in _POOL_BY_KIND}


def answer_options(gen: np.random.Generator, gt: str) -> list[int]:
    """100 option indices into ANSWER_LIST: the right answer, every other answer of its kind
    (shuffled), then random answers of other kinds; all shuffled."""
    kind, gt_i = ANSWER_POOL[gt][0], ANSWER_INDEX[gt]
    same = _KIND_IDS[kind]
    same = gen.permutation(same[same != gt_i])[:VISDIAL_OPTIONS - 1]
    others = gen.choice(_OTHER_IDS[kind], VISDIAL_OPTIONS - 1 - len(same), replace=False)
    options: list[int] = gen.permutation(np.concatenate(([gt_i], same, others))).tolist()
    return options


def relevance(option: str, gt: str) -> float:
    """Dense relevance: 1 same meaning, 0.5 partially right (hedged, or a count off by one)."""
    kind, value, hedged = ANSWER_POOL[option]
    gkind, gvalue, _ = ANSWER_POOL[gt]
    if kind != gkind:
        return 0.0
    if value == gvalue:
        return 0.5 if hedged else 1.0
    if kind == "number" and not hedged and abs(int(value) - int(gvalue)) == 1:
        return 0.5
    return 0.0


VISDIAL_IMAGE_DIRS = {"train": ("train2014", "COCO_train2014"),
                      "val": ("VisualDialog_val2018", "VisualDialog_val2018"),
                      "test": ("VisualDialog_test2018", "VisualDialog_test2018")}


def write_visdial(root: Path, cfg: Config, submit: Submit) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    image_id = 0  # unique over splits
    # split -> (file, relevance key, records): val's dense annotations, train's dense sample
    # (every TRAIN_DENSE_EVERY-th training dialog), keyed as VisDial v1.0 keys them.
    dense: dict[str, tuple[str, str, list[dict[str, Any]]]] = {
        "val": ("visdial_1.0_val_dense_annotations.json", "gt_relevance", []),
        "train": ("visdial_1.0_train_dense_sample.json", "relevance", []),
    }
    for split in SPLITS:
        folder, prefix = VISDIAL_IMAGE_DIRS[split]
        img_dir = root / folder
        img_dir.mkdir(parents=True, exist_ok=True)
        balancer = Balancer()
        questions: dict[str, int] = {}
        dialogs: list[dict[str, Any]] = []
        jobs: list[RenderJob] = []
        for i in range(cfg.counts[split]):
            image_id += 1
            rng = make_rng(cfg.seed, "visdial", split, i)
            scene = sample_scene(rng, cfg.image_size)
            jobs.append(RenderJob(str(img_dir / f"{prefix}_{image_id:012d}.jpg"), scene))
            caption = rng.choice(caption_candidates(scene, rng))
            style = rng.randrange(len(ANSWER_STYLES))  # the answerer's, for the whole dialog
            cands = ask_questions(scene, rng, balancer, VISDIAL_ROUNDS, VISDIAL_FAMILIES,
                                  reuse_families=True)
            n_rounds = rng.randint(1, len(cands)) if split == "test" else len(cands)
            dense_round = rng.randrange(n_rounds)  # val (and train samples): the dense round
            gen = np.random.default_rng(derive_seed(cfg.seed, "visdial", split, i, "options"))
            rounds: list[dict[str, Any]] = []
            for r, cand in enumerate(cands[:n_rounds]):
                q = cand.question.rstrip("?")
                q_idx = questions.setdefault(q, len(questions))
                gt = dialog_answer(cand, style)
                last = r == n_rounds - 1
                if split == "test" and not last:
                    rounds.append({"question": q_idx, "answer": ANSWER_INDEX[gt]})
                    continue
                options = answer_options(gen, gt)
                if split == "test":
                    rounds.append({"question": q_idx, "answer_options": options})
                    continue
                rounds.append({"question": q_idx, "answer": ANSWER_INDEX[gt],
                               "answer_options": options, "gt_index": options.index(
                                   ANSWER_INDEX[gt])})
                if r == dense_round and split in dense and (
                        split == "val" or i % TRAIN_DENSE_EVERY == 0):
                    _, key, records = dense[split]
                    records.append({"image_id": image_id, "round_id": r + 1, key: [
                        relevance(ANSWER_LIST[o], gt) for o in options]})
            dialogs.append({"image_id": image_id, "caption": caption, "dialog": rounds})
        submit(jobs)
        write_json(root / f"visdial_1.0_{split}.json", {
            "version": "1.0", "split": split,
            "data": {"questions": list(questions), "answers": ANSWER_LIST, "dialogs": dialogs},
        })
        summary[split] = {"images": len(dialogs),
                          "rounds": sum(len(d["dialog"]) for d in dialogs)}
    for split, (name, _, records) in dense.items():
        write_json(root / name, records)
        summary[f"{split}_dense"] = len(records)
    return summary


# --------------------------------------------------------------------------------------------
# Orchestration and CLI
# --------------------------------------------------------------------------------------------

WRITERS: dict[str, Callable[[Path, Config, Submit], dict[str, Any]]] = {
    "vqa2": write_vqa2, "textvqa": write_textvqa, "vizwiz": write_vizwiz, "coco": write_coco,
    "visdial": write_visdial,
}
RENDER_CHUNK = 48


class _Renderer:
    """Renders jobs in a spawn-based pool while the main process generates the next split
    (workers == 1: inline, no pool)."""

    def __init__(self, workers: int) -> None:
        self.pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
        self.pending: list[AsyncResult[int]] = []
        self.rendered = 0

    def submit(self, jobs: list[RenderJob]) -> None:
        if self.pool is None:
            self.rendered += render_jobs(jobs)
            return
        for i in range(0, len(jobs), RENDER_CHUNK):
            self.pending.append(self.pool.apply_async(render_jobs, (jobs[i:i + RENDER_CHUNK],)))

    def finish(self) -> int:
        for res in self.pending:
            self.rendered += res.get()
        self.pending.clear()
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
        return self.rendered

    def abort(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def parse_datasets(value: str | Iterable[str]) -> tuple[str, ...]:
    """'vqa2,coco' or an iterable of names -> names in canonical order; ValueError if unknown."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in ALL_DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)}; known: "
                         f"{', '.join(ALL_DATASETS)}")
    if not names:
        raise ValueError(f"no dataset given; known: {', '.join(ALL_DATASETS)}")
    return tuple(d for d in ALL_DATASETS if d in names)


def generate(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    train_images: int = 2000,
    val_images: int = 500,
    test_images: int = 500,
    image_size: int = 128,
    datasets: str | Iterable[str] = ALL_DATASETS,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the ShapesWorld datasets under ``out_dir`` and return a summary
    ``{"out_dir", "seed", "image_size", "datasets": {name: {split: counts}}, "images",
    "seconds"}``. Raises ValueError on bad arguments. ``test_images`` is not used by coco
    (COCO captions have no test split). Files of the same name are overwritten; nothing else
    under ``out_dir`` is deleted."""
    counts = {"train": train_images, "val": val_images, "test": test_images}
    for split, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"{split}_images must be a positive integer, got {n!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) \
            or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    names = parse_datasets(datasets)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config(seed=seed, counts=counts, image_size=image_size)
    renderer = _Renderer(workers or os.cpu_count() or 1)
    summary: dict[str, Any] = {"out_dir": str(out), "seed": seed, "image_size": image_size,
                               "datasets": {}}
    try:
        for name in names:
            summary["datasets"][name] = WRITERS[name](out / name, cfg, renderer.submit)
        summary["images"] = renderer.finish()
    except BaseException:
        renderer.abort()
        raise
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _image_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"image size must be >= {MIN_IMAGE_SIZE}, got {value}")
    return value


def _datasets(text: str) -> tuple[str, ...]:
    try:
        return parse_datasets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.data.shapes",
        description="Generate ShapesWorld, a seeded synthetic world, in the official VQA v2, "
        "TextVQA, VizWiz, COCO captions and VisDial v1.0 formats.",
    )
    p.add_argument("--out", required=True, help="output directory (one folder per dataset)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--train-images", type=_positive_int, default=2000)
    p.add_argument("--val-images", type=_positive_int, default=500)
    p.add_argument("--test-images", type=_positive_int, default=500,
                   help="test images per dataset (not used by coco: no captioned test split)")
    p.add_argument("--image-size", type=_image_size, default=128,
                   help=f"square image side in pixels (>= {MIN_IMAGE_SIZE})")
    p.add_argument("--datasets", type=_datasets, default=ALL_DATASETS,
                   help=f"comma-separated subset of {','.join(ALL_DATASETS)}")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="render processes (default: os.cpu_count())")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = generate(
        args.out, seed=args.seed, train_images=args.train_images, val_images=args.val_images,
        test_images=args.test_images, image_size=args.image_size, datasets=args.datasets,
        workers=args.workers,
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
