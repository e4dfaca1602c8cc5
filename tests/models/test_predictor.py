"""The Predictor end to end: a small model learns from images, is released, reloaded and
answers raw image bytes; LoRRA copies an OCR word it never saw as an answer, with OCR given
or read by rapidocr from the pixels."""

import io
import threading

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from models import create_model, save_pretrained
from models.predictor import Predictor, resolve_device
from models.processors import AnswerSpace, ImageTransform, OCRProcessor, Vocabulary
from models.processors.ocr_engine import OCRWord

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 200, 60)}
# A frozen (random) backbone keeps BatchNorm in eval mode, so training and inference see the
# same function even on batches of identical images.
TINY = dict(embedding_dim=16, hidden_dim=32, num_glimpses=1, image_dim=32,
            backbone="resnet18", freeze_backbone=True, attention_dim=32, fusion_dim=32,
            classifier_dim=32, classifier_text_dim=16, dropout=0.0)


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, format="PNG")
    return buf.getvalue()


def _train(model, batch, steps=150):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
    model.eval()


BAN_TINY = dict(embedding_dim=16, hidden_dim=32, num_glimpses=2, image_dim=32,
                backbone="resnet18", freeze_backbone=True, classifier_dim=32, dropout=0.0)


@pytest.fixture(scope="module", params=["pythia", "ban"])
def color_release(request, tmp_path_factory):
    torch.manual_seed(0)
    vocab = Vocabulary.build(["what color is it"])
    space = AnswerSpace(["red", "blue", "green", "yes"])
    transform = ImageTransform(size=32)
    kwargs = TINY if request.param == "pythia" else BAN_TINY
    model = create_model(request.param, vocab_size=len(vocab), num_answers=len(space), **kwargs)
    names = list(COLORS)
    images = torch.stack([transform(Image.open(io.BytesIO(_png(COLORS[n])))) for n in names])
    ids, n = vocab.encode("what color is it", max_length=14)
    targets = torch.stack([space.target([c] * 10) for c in names])
    batch = {"image": images, "question_ids": ids.repeat(3, 1),
             "question_length": torch.full((3,), n), "targets": targets}
    _train(model, batch)
    out = tmp_path_factory.mktemp("rel") / request.param
    save_pretrained(model, out, processors={"vocab": vocab, "answer_space": space,
                                            "image_transform": transform})
    return out


def test_vqa_answers_raw_image_bytes_after_a_release_round_trip(color_release):
    p = Predictor.from_pretrained(color_release, device="cpu")
    assert p.tasks == ("vqa",)
    out = p.vqa([_png(COLORS[c]) for c in COLORS], ["What color is it?"] * 3, top_k=3)
    assert [o[0]["answer"] for o in out] == list(COLORS)
    for answers in out:
        assert len(answers) == 3
        scores = [a["score"] for a in answers]
        assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
        assert all(a["answer"] != "<unk>" for a in answers)
    pil = Image.open(io.BytesIO(_png(COLORS["blue"])))
    assert p.vqa([pil], ["what color is it"], top_k=1)[0][0]["answer"] == "blue"


def test_vqa_is_safe_from_several_threads(color_release):
    p = Predictor.from_pretrained(color_release, device="cpu")
    images = [_png(COLORS[c]) for c in COLORS]
    expected = p.vqa(images, ["what color is it"] * 3)
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(p.vqa(images, ["what color is it"] * 3))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12 and all(r == expected for r in results)


def test_predictor_errors(color_release):
    p = Predictor.from_pretrained(color_release, device="cpu")
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        p.vqa([_png((0, 0, 0))] * 2, ["q"])
    with pytest.raises(ValueError, match="serves \\['vqa'\\], not 'textvqa'"):
        p.textvqa([_png((0, 0, 0))], ["q"])
    with pytest.raises(ValueError, match="not a readable image"):
        p.vqa([b"garbage"], ["q"])
    features_only = create_model("pythia", vocab_size=8, num_answers=3,
                                 **{**TINY, "backbone": None})
    with pytest.raises(ValueError, match="trained on precomputed features only"):
        Predictor(features_only, p.processors).vqa([_png((0, 0, 0))], ["q"])
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def _sign(word: str) -> bytes:
    img = Image.new("RGB", (320, 120), (40, 40, 60))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 30, 300, 90], fill=(240, 240, 240))
    d.text((35, 38), word, fill=(10, 10, 10), font=ImageFont.load_default(size=36))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def lorra_release(tmp_path_factory):
    """LoRRA trained to copy the first OCR token: the answers are words outside its space."""
    torch.manual_seed(0)
    vocab = Vocabulary.build(["what is written on the sign"])
    space = AnswerSpace(["yes", "no", "red"])
    ocr = OCRProcessor(max_tokens=4, hash_buckets=256)
    transform = ImageTransform(size=32)
    model = create_model("lorra", vocab_size=len(vocab), num_answers=len(space),
                         hash_buckets=256, ocr_embedding_dim=16, ocr_dim=32, **TINY)
    words = [["plonk", "exit"], ["zorblat", "open"], ["quix", "stop"], ["vemba", "push"]]
    samples = [ocr(w, [[0.1, 0.3, 0.5, 0.7], [0.6, 0.3, 0.9, 0.7]]) for w in words]
    ids, n = vocab.encode("what is written on the sign", max_length=14)
    batch = {
        "image": torch.stack([transform(Image.new("RGB", (32, 32), (200, 200, 200)))] * 4),
        "question_ids": ids.repeat(4, 1), "question_length": torch.full((4,), n),
        **{k: torch.stack([s[k] for s in samples])
           for k in ("ocr_char_ids", "ocr_hash_ids", "ocr_boxes", "ocr_mask")},
        "ocr_tokens": [s["ocr_tokens"] for s in samples],
        "targets": torch.stack([ocr.copy_target(space, [w[0]] * 10, s["ocr_tokens"])
                                for w, s in zip(words, samples)]),
    }
    _train(model, batch, steps=150)
    out = tmp_path_factory.mktemp("rel") / "lorra"
    save_pretrained(model, out, processors={"vocab": vocab, "answer_space": space, "ocr": ocr,
                                            "image_transform": transform})
    return out


def test_textvqa_copies_a_word_outside_the_answer_space(lorra_release):
    p = Predictor.from_pretrained(lorra_release, device="cpu")
    given = [[OCRWord("Zorblat", (0.1, 0.3, 0.5, 0.7), 1.0), ("open", [0.6, 0.3, 0.9, 0.7])]]
    out = p.textvqa([_png((200, 200, 200))], ["what is written on the sign?"], ocr=given)
    best = out[0]["answers"][0]
    assert best == {"answer": "zorblat", "score": best["score"], "copied": True}
    assert "zorblat" not in p.processors["answer_space"]
    assert out[0]["ocr_tokens"] == ["zorblat", "open"]


def test_textvqa_reads_the_image_with_rapidocr(lorra_release):
    p = Predictor.from_pretrained(lorra_release, device="cpu")
    out = p.textvqa([_sign("QUIX stop")], ["what is written on the sign?"], top_k=2)
    assert out[0]["ocr_tokens"] == ["quix", "stop"]
    assert out[0]["answers"][0]["answer"] == "quix" and out[0]["answers"][0]["copied"]


SMALL = dict(embedding_dim=16, hidden_dim=32, image_dim=32, attention_dim=32,
             backbone="resnet18", freeze_backbone=True, dropout=0.0)


def test_caption_greedy_and_beams_after_a_release_round_trip(tmp_path):
    torch.manual_seed(0)
    captions = {c: f"a {c} square on a dark background" for c in COLORS}
    vocab = Vocabulary.build(list(captions.values()))
    transform = ImageTransform(size=32)
    model = create_model("butd", vocab_size=len(vocab), **SMALL)
    names = list(COLORS)
    ids = torch.stack([vocab.encode(captions[c], max_length=12, add_bos=True,
                                    add_eos=True)[0] for c in names])
    batch = {"image": torch.stack([transform(Image.open(io.BytesIO(_png(COLORS[c]))))
                                   for c in names]),
             "caption_ids": ids}
    _train(model, batch, steps=120)
    save_pretrained(model, tmp_path / "butd", processors={"caption_vocab": vocab,
                                                          "image_transform": transform})
    p = Predictor.from_pretrained(tmp_path / "butd", device="cpu")
    assert p.tasks == ("caption",)
    greedy = p.caption([_png(COLORS[c]) for c in names])
    assert [g["caption"] for g in greedy] == [captions[c] for c in names]
    beams = p.caption([_png(COLORS["green"])], beam_size=3)[0]
    scores = [b["score"] for b in beams["beams"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert beams["caption"] == captions["green"] == beams["beams"][0]["caption"]
    with pytest.raises(ValueError, match=r"beam_size must be in 1\.\.32"):
        p.caption([_png((0, 0, 0))], beam_size=0)
    with pytest.raises(ValueError, match="serves \\['caption'\\], not 'vqa'"):
        p.vqa([_png((0, 0, 0))], ["q"])


def test_dialog_ranks_options_and_answers_free_form(tmp_path):
    torch.manual_seed(0)
    names = list(COLORS)
    options = [*names, "yes", "no", "two"]
    history = [{"question": "is there a square", "answer": "yes"}]
    vocab = Vocabulary.build([*options, "what color is it", "is there a square", "a square"])
    transform = ImageTransform(size=32)
    model = create_model("visdial", vocab_size=len(vocab), decoder="both", **SMALL)
    processors = {"vocab": vocab, "image_transform": transform}
    builder = Predictor(model, processors)  # its batch layout is the one inference uses
    rows = [builder._dialog_batch(Image.open(io.BytesIO(_png(COLORS[c]))), history,
                                  "what color is it", "a square", options) for c in names]
    batch = {k: torch.cat([r[k] for r in rows]) if isinstance(v, torch.Tensor) else v
             for k, v in rows[0].items()}
    answers = [["yes", c] for c in names]  # round 1 answer, round 2 answer
    batch["answer_ids"] = torch.stack([torch.stack([
        vocab.encode(a, max_length=20, add_bos=True, add_eos=True)[0] for a in pair])
        for pair in answers])                                                  # (B, R, La)
    batch["gt_index"] = torch.tensor([[-1, options.index(c)] for c in names])  # (B, R)
    _train(model, batch, steps=150)
    save_pretrained(model, tmp_path / "visdial", processors=processors)
    p = Predictor.from_pretrained(tmp_path / "visdial", device="cpu")
    out = p.dialog([_png(COLORS[c]) for c in names], [history] * 3, ["what color is it"] * 3,
                   captions=["a square"] * 3, options=[options] * 3)
    assert [o["answer"] for o in out] == names
    for o in out:
        scores = [r["score"] for r in o["ranking"]]
        assert scores == sorted(scores, reverse=True)
        assert sorted(r["answer"] for r in o["ranking"]) == sorted(options)
    free = p.dialog([_png(COLORS["blue"])], [history], ["what color is it"],
                    captions=["a square"])
    assert free == [{"answer": "blue"}]
    with pytest.raises(ValueError, match="each history turn needs 'question' and 'answer'"):
        p.dialog([_png((0, 0, 0))], [[{"question": "x"}]], ["q"])


def test_multitask_release_serves_every_task_through_the_predictor(tmp_path):
    torch.manual_seed(0)
    names = list(COLORS)
    vocab = Vocabulary.build(["what color is it", "what is written on the sign", *names])
    caption_vocab = Vocabulary.build([f"a {c} square" for c in names])
    spaces = {"vqa2": AnswerSpace(names), "textvqa": AnswerSpace(["yes", "no"])}
    ocr = OCRProcessor(max_tokens=4, hash_buckets=64)
    transform = ImageTransform(size=32)
    model = create_model(
        "multitask", vocab_size=len(vocab), caption_vocab_size=len(caption_vocab),
        answer_spaces={k: len(v) for k, v in spaces.items()}, hash_buckets=64,
        ocr_embedding_dim=8, ocr_dim=16, caption_hidden_dim=32, caption_attention_dim=32,
        dialog_attention_dim=32, **TINY)
    ids, n = vocab.encode("what color is it", max_length=14)
    batch = {"dataset": "vqa2",
             "image": torch.stack([transform(Image.open(io.BytesIO(_png(COLORS[c]))))
                                   for c in names]),
             "question_ids": ids.repeat(3, 1), "question_length": torch.full((3,), n),
             "targets": torch.stack([spaces["vqa2"].target([c] * 10) for c in names])}
    _train(model, batch, steps=100)
    processors = {"vocab": vocab, "caption_vocab": caption_vocab, "ocr": ocr,
                  "image_transform": transform,
                  **{f"answer_space_{k}": v for k, v in spaces.items()}}
    save_pretrained(model, tmp_path / "mt", processors=processors)
    p = Predictor.from_pretrained(tmp_path / "mt", device="cpu")
    assert set(p.tasks) == {"vqa", "textvqa", "caption", "dialog"}
    vqa = p.vqa([_png(COLORS[c]) for c in names], ["what color is it"] * 3, top_k=1)
    assert [v[0]["answer"] for v in vqa] == names
    text = p.textvqa([_png((0, 0, 0))], ["what is written on the sign"],
                     ocr=[[("zorblat", [0.1, 0.1, 0.4, 0.3])]])
    assert text[0]["ocr_tokens"] == ["zorblat"] and len(text[0]["answers"]) == 3
    cap = p.caption([_png(COLORS["red"])], beam_size=2)
    assert isinstance(cap[0]["caption"], str) and len(cap[0]["beams"]) == 2
    dia = p.dialog([_png(COLORS["red"])], [[]], ["what color is it"], options=[names])
    assert dia[0]["answer"] in names and len(dia[0]["ranking"]) == 3
    with pytest.raises(ValueError, match=r"unknown dataset 'gqa'; this model serves"):
        p.vqa([_png((0, 0, 0))], ["q"], dataset="gqa")
