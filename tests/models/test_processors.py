import io
import json
from itertools import combinations

import pytest
import torch
from PIL import Image

from models.processors import (
    AnswerSpace,
    ImageDecodeError,
    ImageTransform,
    OCRProcessor,
    Vocabulary,
    load_image,
    load_processors,
    normalize_answer,
    save_processors,
    soft_score_from_count,
    soft_scores,
    tokenize,
)
from models.processors.answers import CONTRACTIONS, process_punctuation


# -- the official normalization: the examples of FORMATS.md and the rules one by one --------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("t-shirt", "t shirt"),                 # punctuation not touching a space -> space
        ("1,000 t-shirts", "1000 tshirts"),     # digit,digit anywhere -> every mark deleted
        ("yes, it is", "yes it is"),            # ',' touches a space -> deleted
        ("none", "0"),                          # number words, `none` included
        ("Two", "2"),
        ("ten dogs", "10 dogs"),
        ("the red ball", "red ball"),           # articles dropped
        ("A Cat", "cat"),
        ("dont", "don't"),                      # contractions map
        ("isnt it", "isn't it"),
        ("yes.", "yes"),                        # period not followed by a digit removed
        ("3.5", "3.5"),                         # period followed by a digit kept
        ("  Red\n", "red"),
        ("what's", "what's"),                   # apostrophes are not in the list
        ("x/y", "x y"),
        ("x / y", "x y"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_period_strip_stops_after_32_periods_like_the_official_count_argument():
    text = "." * 40
    assert process_punctuation(text) == "." * 8


def test_contractions_table_is_the_official_size():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # an official oddity kept as published


def _brute_force(matches: int) -> float:
    """Leave-one-out average of min(1, matches among the other 9 / 3)."""
    gts = ["x"] * matches + ["y"] * (10 - matches)
    accs = []
    for i in range(10):
        others = gts[:i] + gts[i + 1:]
        accs.append(min(1.0, others.count("x") / 3))
    return sum(accs) / 10


@pytest.mark.parametrize("c", range(11))
def test_soft_score_equals_leave_one_out_formula(c):
    assert soft_score_from_count(c) == pytest.approx(_brute_force(c), abs=1e-12)


def test_soft_score_table_from_formats():
    assert [round(soft_score_from_count(c), 6) for c in range(5)] == [0, 0.3, 0.6, 0.9, 1.0]


def test_soft_scores_normalize_answers():
    answers = ["Red"] * 2 + ["red."] + ["orange"] * 7
    scores = soft_scores(answers)
    assert scores == {"red": pytest.approx(0.9), "orange": pytest.approx(1.0)}


# -- answer space ------------------------------------------------------------------------
def test_answer_space_build_top_k_min_count_and_targets(tmp_path):
    occurrences = ["yes"] * 5 + ["no"] * 4 + ["Two"] * 3 + ["rare"]
    space = AnswerSpace.build(occurrences, min_count=2)
    assert space.answers == ["<unk>", "yes", "no", "2"]
    assert AnswerSpace.build(occurrences, top_k=2).answers == ["<unk>", "yes", "no"]
    target = space.target(["2"] * 2 + ["two"] + ["rare"] * 7)
    assert target.shape == (4,) and target.dtype == torch.float32
    assert target[space.word2idx("2")] == pytest.approx(0.9)
    assert target[0] == 0  # "rare" is outside the space and <unk> never scores
    assert space.word2idx("never seen") == 0
    space.save(tmp_path / "a.json")
    assert AnswerSpace.load(tmp_path / "a.json").answers == space.answers


def test_answer_space_rejects_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "vocabulary", "words": []}))
    with pytest.raises(ValueError, match=r"bad.json: field 'type' must be 'answer_space'"):
        AnswerSpace.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AnswerSpace.load(bad)


# -- text --------------------------------------------------------------------------------
def test_tokenize_and_vocabulary_round_trip(tmp_path):
    assert tokenize("What's on the man's T-shirt?") == ["what's", "on", "the", "man's", "t",
                                                         "shirt"]
    vocab = Vocabulary.build(["what color is the ball", "what shape is the ball"], min_count=2)
    assert vocab.words[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert set(vocab.words[4:]) == {"ball", "is", "the", "what"}
    ids, n = vocab.encode("what color is the ball", max_length=8, add_bos=True, add_eos=True)
    assert n == 7 and ids.tolist()[0] == 2 and ids.tolist()[6] == 3 and ids.tolist()[7] == 0
    assert ids.tolist()[2] == 1  # "color" was seen once: <unk> at min_count=2
    assert vocab.decode(ids) == "what <unk> is the ball"
    truncated, n = vocab.encode("what is the ball", max_length=3, add_eos=True)
    assert n == 3 and truncated.tolist()[-1] == 3  # </s> survives truncation
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").words == vocab.words


# -- OCR ---------------------------------------------------------------------------------
def test_ocr_processor_tensors_and_copy_target():
    ocr = OCRProcessor(max_tokens=4, max_chars=6, hash_buckets=64, max_ngrams=5)
    out = ocr(["STOP", "", "Zorblat!", "exit", "more", "dropped"],
              [[0, 0, .5, .5], [0, 0, 0, 0], [.1, .1, 1.2, .3], [0, 0, 1, 1], [0, 0, 1, 1],
               [0, 0, 1, 1]])
    assert out["ocr_tokens"] == ["stop", "zorblat", "exit", "more"]
    assert out["ocr_mask"].tolist() == [True] * 4
    assert out["ocr_char_ids"].shape == (4, 6)
    assert out["ocr_char_ids"][0, :4].tolist() == [19, 20, 15, 16]  # s t o p, 1-based
    assert out["ocr_boxes"][1].tolist() == pytest.approx([.1, .1, 1.0, .3])  # clamped
    assert out["ocr_hash_ids"].min() >= 0 and out["ocr_hash_ids"].max() < 64
    assert torch.equal(out["ocr_hash_ids"][1], ocr(["zorblat"])["ocr_hash_ids"][0])
    space = AnswerSpace(["yes", "no"])
    target = ocr.copy_target(space, ["zorblat"] * 8 + ["yes"] * 2, out["ocr_tokens"])
    assert target.shape == (3 + 4,)
    assert target[space.word2idx("yes")] == pytest.approx(0.6)
    assert target[3 + 1] == pytest.approx(1.0) and target[3] == 0


# -- images ------------------------------------------------------------------------------
def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_load_image_converts_modes_and_applies_exif(tmp_path):
    for mode, color in (("L", 128), ("RGBA", (255, 0, 0, 0)), ("CMYK", (0, 255, 0, 0)),
                        ("P", 3), ("I;16", 4000)):
        img = load_image(_png(Image.new(mode, (5, 3), color)) if mode != "CMYK" else
                         _jpeg_cmyk(color))
        assert img.mode == "RGB" and img.size == (5, 3)
    # a transparent red pixel is composited over black
    assert load_image(_png(Image.new("RGBA", (2, 2), (255, 0, 0, 0)))).getpixel((0, 0)) == \
        (0, 0, 0)
    # EXIF orientation 6 (rotate 90 cw): a 6x2 file is shown as 2x6
    rotated = Image.new("RGB", (6, 2), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "r.jpg"
    rotated.save(path, exif=exif)
    assert load_image(path).size == (2, 6)


def _jpeg_cmyk(color) -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (5, 3), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_load_image_refuses_garbage_bombs_and_missing_files(tmp_path):
    with pytest.raises(ImageDecodeError, match="<bytes>: not a readable image"):
        load_image(b"definitely not an image")
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        load_image(_png(Image.new("L", (300, 300))), max_pixels=10_000)
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        load_image(tmp_path / "nope.jpg")
    truncated = _png(Image.new("RGB", (64, 64), (1, 2, 3)))[:60]
    with pytest.raises(ImageDecodeError):
        load_image(truncated)


def test_image_transform_shape_normalization_and_round_trip(tmp_path):
    t = ImageTransform(size=32)
    x = t(Image.new("RGB", (50, 20), (255, 255, 255)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = (1.0 - 0.485) / 0.229
    assert x[0].mean().item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="size must be >= 16"):
        ImageTransform(size=4)
    t.save(tmp_path / "t.json")
    assert ImageTransform.load(tmp_path / "t.json") == t


def test_processor_bundle_round_trip_through_the_registry(tmp_path):
    procs = {
        "vocab": Vocabulary.build(["a b c"]),
        "answer_space": AnswerSpace(["yes", "no"]),
        "ocr": OCRProcessor(max_tokens=7),
        "image_transform": ImageTransform(size=64),
    }
    save_processors(tmp_path / "processor", procs)
    back = load_processors(tmp_path / "processor")
    assert set(back) == set(procs)
    assert back["vocab"].words == procs["vocab"].words
    assert back["answer_space"].answers == procs["answer_space"].answers
    assert back["ocr"].max_tokens == 7 and back["image_transform"].size == 64
    (tmp_path / "processor" / "evil.json").write_text(json.dumps({"type": "os.system"}))
    with pytest.raises(ValueError, match="field 'type' must name a processor"):
        load_processors(tmp_path / "processor")
    with pytest.raises(ValueError, match="must match"):
        save_processors(tmp_path / "p2", {"../escape": procs["vocab"]})


def test_every_subset_of_answers_scores_within_bounds():
    # a small property check: scores are in [0, 1] and sum of matches drives them
    pool = ["a", "b", "c"]
    for k in range(1, 4):
        for combo in combinations(pool * 4, k):
            for score in soft_scores(list(combo) + ["z"] * (10 - k)).values():
                assert 0.0 <= score <= 1.0
