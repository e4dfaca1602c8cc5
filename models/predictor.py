"""Batch inference from raw inputs: ``Predictor.from_pretrained(release_dir)``.

    p = Predictor.from_pretrained("runs/shapes/release", device="auto")
    p.vqa([image_bytes, pil_image], ["what color is the circle?", "how many stars?"], top_k=3)
    # -> [[{"answer": "red", "score": 0.97}, ...], [...]]
    p.textvqa([image], ["what is written on the sign?"])   # OCR by rapidocr unless given
    # -> [{"answers": [{"answer": "zorblat", "score": 0.9, "copied": True}, ...],
    #      "ocr_tokens": ["zorblat", "exit"]}]
    p.caption([image], beam_size=3)
    # -> [{"caption": "a red circle", "beams": [{"caption": ..., "score": -1.2}, ...]}]
    p.dialog([image], [[{"question": "is there a circle", "answer": "yes"}]],
             ["what color is it"], captions=["a red circle"], options=[["red", "blue", ...]])
    # -> [{"answer": "red", "ranking": [{"answer": "red", "score": 3.1}, ...]}]

Preprocessing (image decoding with EXIF orientation and any-mode-to-RGB, the release's image
transform, question tokenization) happens inside; results are plain Python. A predictor is
safe to call from several threads: every call builds its own tensors and runs the model under
``torch.inference_mode`` in eval mode, and no decoding state lives on the object. On CUDA the
forward pass runs under bf16 autocast.

A release trained on precomputed features only (no backbone) cannot answer about raw images:
the call fails with a message saying so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from models.base import BaseModel
from models.processors import ImageTransform, load_image
from models.processors.answers import UNK_ANSWER
from models.processors.ocr_engine import OCREngine, OCRWord
from models.release import load

#: An encoded image (bytes), a PIL image, or pixels already through ``Predictor.preprocess``
#: (a (3, S, S) float tensor at the release's transform size: what a server prepares in its
#: decoding threads so the inference thread only stacks them).
ImageInput = Image.Image | bytes | torch.Tensor

# The dataset a task's head was trained on, by default. A multi-task model keeps one answer
# space per dataset (processor ``answer_space_<dataset>``) and routes on ``batch["dataset"]``;
# single-task families ignore the key.
DEFAULT_DATASET = {"vqa": "vqa2", "textvqa": "textvqa", "caption": "coco", "dialog": "visdial"}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> the first CUDA device when there is one, else the CPU; a CUDA request on
    a machine without CUDA is an error that says so."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here")
    return dev


class Predictor:
    def __init__(
        self,
        model: BaseModel,
        processors: Mapping[str, Any],
        *,
        device: str | torch.device = "cpu",
        max_question_length: int = 14,
        ocr_engine: OCREngine | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processors = dict(processors)
        self.max_question_length = max_question_length
        # VisDial question, answer and history lengths (the reader's defaults)
        self.dialog_lengths = (20, 20, 40)
        transform = self.processors.get("image_transform")
        self.transform: ImageTransform = transform if transform is not None else ImageTransform()
        self._ocr = ocr_engine

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "auto",
                        **kwargs: Any) -> Predictor:
        """Load a release directory (``models.release``) and wrap it."""
        dev = resolve_device(device)
        model, processors = load(directory, device=dev)
        return cls(model, processors, device=dev, **kwargs)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.tasks)

    # -- shared preprocessing ---------------------------------------------------------------
    def _require(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"this {self.model.family!r} model serves {list(self.tasks)}, "
                             f"not {task!r}")

    def _answer_space(self, dataset: str) -> Any:
        space = self.processors.get(f"answer_space_{dataset}", self.processors.get("answer_space"))
        if space is None:
            known = sorted(k for k in self.processors if k.startswith("answer_space"))
            raise ValueError(f"no answer space for dataset {dataset!r} in this release "
                             f"(it has {known})")
        return space

    def _pil(self, images: Sequence[ImageInput]) -> list[Image.Image | torch.Tensor]:
        return [img if isinstance(img, (Image.Image, torch.Tensor)) else load_image(img)
                for img in images]

    def preprocess(self, image: Image.Image | bytes) -> torch.Tensor:
        """The release's transform of one image: (3, S, S) float32, ready to be batched (an
        ``ImageInput`` every task takes)."""
        return self.transform(image if isinstance(image, Image.Image) else load_image(image))

    def _pixels(self, pil: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        if getattr(self.model, "grid_encoder", None) is None:
            raise ValueError(f"this {self.model.family!r} release was trained on precomputed "
                             "features only (no image backbone), so it cannot take raw images")
        size = (3, self.transform.size, self.transform.size)
        pixels = []
        for img in pil:
            if isinstance(img, torch.Tensor):
                if tuple(img.shape) != size:
                    raise ValueError(f"a preprocessed image must be {size}, got "
                                     f"{tuple(img.shape)}")
                pixels.append(img)
            else:
                pixels.append(self.transform(img))
        return torch.stack(pixels).to(self.device, non_blocking=True)     # (B, 3, S, S)

    def _questions(self, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        vocab = self.processors["vocab"]
        encoded = [vocab.encode(q, max_length=self.max_question_length) for q in questions]
        ids = torch.stack([e[0] for e in encoded]).to(self.device)    # (B, L)
        lengths = torch.tensor([max(1, e[1]) for e in encoded], device=self.device)
        return {"question_ids": ids, "question_length": lengths}

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    yield
            else:
                yield

    @staticmethod
    def _check_lengths(images: Sequence[Any], questions: Sequence[Any]) -> None:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if not images:
            raise ValueError("empty batch")

    # -- tasks ------------------------------------------------------------------------------
    def vqa(self, images: Sequence[ImageInput], questions: Sequence[str], *, top_k: int = 5,
            dataset: str = DEFAULT_DATASET["vqa"]) -> list[list[dict[str, Any]]]:
        """Top-k answers per (image, question), best first (``score``: sigmoid probability).
        ``dataset`` picks the answer head of a multi-task model (vqa2, vizwiz, ...)."""
        self._require("vqa")
        self._check_lengths(images, questions)
        batch = {"dataset": dataset, "image": self._pixels(self._pil(images)),
                 **self._questions(questions)}
        with self._inference():
            logits = self.model(batch)["logits"].float().cpu()         # (B, A)
        # Rank by logits (saturated sigmoids tie at 1.0), report sigmoid probabilities. The
        # clone makes an ordinary tensor: inference tensors refuse in-place edits.
        logits = logits.clone()
        space = self._answer_space(dataset)
        if space.answers and space.answers[0] == UNK_ANSWER:
            logits[:, 0] = float("-inf")  # never answer "<unk>"
        k = max(1, min(int(top_k), logits.size(1) - 1))
        values, idx = logits.topk(k, dim=1)
        values = torch.sigmoid(values)
        return [[{"answer": space.idx2word(j), "score": round(float(v), 6)}
                 for v, j in zip(vs, js, strict=True)]
                for vs, js in zip(values.tolist(), idx.tolist(), strict=True)]

    def ocr(self, image: Image.Image | bytes) -> list[OCRWord]:
        """The words rapidocr reads in an image (engine loaded on first use)."""
        if self._ocr is None:
            self._ocr = OCREngine()
        return self._ocr(image if isinstance(image, Image.Image) else load_image(image))

    def textvqa(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        *,
        ocr: Sequence[Sequence[OCRWord | tuple[str, Sequence[float]]]] | None = None,
        top_k: int = 5,
        dataset: str = DEFAULT_DATASET["textvqa"],
    ) -> list[dict[str, Any]]:
        """Answers that may copy an OCR token. ``ocr`` (optional, per image) gives words with
        relative x1,y1,x2,y2 boxes; otherwise rapidocr reads each image. Each answer says
        whether it was ``copied`` from the OCR tokens."""
        from models.lorra import decode_answers  # the copy decoding lives with the family

        self._require("textvqa")
        self._check_lengths(images, questions)
        pil = self._pil(images)
        if ocr is not None and len(ocr) != len(pil):
            raise ValueError(f"{len(pil)} images but OCR for {len(ocr)}")
        processor = self.processors["ocr"]
        per_image = []
        for i, img in enumerate(pil):
            if ocr is None and isinstance(img, torch.Tensor):
                raise ValueError("a preprocessed image cannot be read by OCR: pass ocr=")
            words = ocr[i] if ocr is not None else self.ocr(img)  # type: ignore[arg-type]
            tokens = [w.word if isinstance(w, OCRWord) else str(w[0]) for w in words]
            boxes = [list(w.box) if isinstance(w, OCRWord) else [float(v) for v in w[1]]
                     for w in words]
            per_image.append(processor(tokens, boxes))
        batch: dict[str, Any] = {"dataset": dataset, "image": self._pixels(pil),
                                 **self._questions(questions)}
        for key in ("ocr_char_ids", "ocr_hash_ids", "ocr_boxes", "ocr_mask"):
            batch[key] = torch.stack([p[key] for p in per_image]).to(self.device)
        batch["ocr_tokens"] = [p["ocr_tokens"] for p in per_image]
        with self._inference():
            logits = self.model(batch)["logits"].float()                # (B, A + K)
        logits = logits.clone()
        space = self._answer_space(dataset)
        if space.answers and space.answers[0] == UNK_ANSWER:
            logits[:, 0] = float("-inf")
        decoded = decode_answers(logits, space.answers, batch["ocr_tokens"], top_k=top_k)
        return [{"answers": [{"answer": a, "score": round(s, 6), "copied": c} for a, s, c in d],
                 "ocr_tokens": toks}
                for d, toks in zip(decoded, batch["ocr_tokens"], strict=True)]

    def caption(self, images: Sequence[ImageInput], *, beam_size: int = 1,
                max_length: int = 20) -> list[dict[str, Any]]:
        """A caption per image (greedy at ``beam_size`` 1) and the beams, best first
        (``score``: summed log-probability)."""
        self._require("caption")
        if not images:
            raise ValueError("empty batch")
        if not 1 <= beam_size <= 32 or not 1 <= max_length <= 100:
            raise ValueError("beam_size must be in 1..32 and max_length in 1..100")
        batch = {"dataset": DEFAULT_DATASET["caption"], "image": self._pixels(self._pil(images))}
        with self._inference():
            results = self.model.generate(batch, beam_size=beam_size,  # type: ignore[operator]
                                          max_length=max_length)
        vocab = self.processors["caption_vocab"]
        return [{"caption": vocab.decode(r["ids"]),
                 "beams": [{"caption": vocab.decode(ids), "score": round(float(score), 6)}
                           for ids, score in r["beams"]]}
                for r in results]

    def dialog(
        self,
        images: Sequence[ImageInput],
        histories: Sequence[Sequence[Mapping[str, str]]],
        questions: Sequence[str],
        *,
        captions: Sequence[str] | None = None,
        options: Sequence[Sequence[str]] | None = None,
        max_length: int = 20,
    ) -> list[dict[str, Any]]:
        """Answer the next question of each dialog. The history (earlier ``{"question",
        "answer"}`` rounds) travels with the call: nothing is remembered between calls.

        With ``options`` (per dialog, the candidate answers) the answer is the best-scored
        option and ``ranking`` lists them all, best first; without, the generative decoder
        answers free-form (a model with only the discriminative decoder then refuses).
        Dialogs are run one at a time (their round counts differ).
        """
        self._require("dialog")
        self._check_lengths(images, questions)
        if len(histories) != len(images):
            raise ValueError(f"{len(images)} images but {len(histories)} histories")
        if options is not None and len(options) != len(images):
            raise ValueError(f"{len(images)} images but options for {len(options)}")
        pil = self._pil(images)
        free_form = options is None or any(not o for o in options)
        if free_form and not callable(getattr(self.model, "generate_answers", None)):
            raise ValueError(f"this {self.model.family!r} model ranks candidate answers only "
                             "(no generative decoder): send options")
        out = []
        for i, img in enumerate(pil):
            opts = list(options[i]) if options is not None else None
            caption = captions[i] if captions is not None else ""
            batch = self._dialog_batch(img, histories[i], questions[i], caption, opts)
            with self._inference():
                if opts:
                    scores = self.model(batch)["scores"][0, -1, : len(opts)].float().cpu()
                    order = scores.argsort(descending=True, stable=True).tolist()
                    out.append({"answer": opts[order[0]],
                                "ranking": [{"answer": opts[j], "score": round(float(scores[j]), 6)}
                                            for j in order]})
                else:
                    gen = self.model.generate_answers(  # type: ignore[operator]
                        batch, max_length=max_length)
                    out.append({"answer": self.processors["vocab"].decode(gen[0][-1])})
        return out

    def _dialog_batch(self, image: Image.Image | torch.Tensor,
                      history: Sequence[Mapping[str, str]],
                      question: str, caption: str, options: list[str] | None
                      ) -> dict[str, Any]:
        """One dialog as the VisDial reader lays it out (``training/data/visdial.py``): R =
        rounds so far + 1; history row 0 the caption, row r the Q/A of round r - 1; options
        only on the last round."""
        vocab = self.processors["vocab"]
        lq, la, lh = self.dialog_lengths
        for turn in history:
            if not isinstance(turn, Mapping) or not {"question", "answer"} <= set(turn):
                raise ValueError("each history turn needs 'question' and 'answer'")
        rounds = [*(str(t["question"]) for t in history), question]
        R = len(rounds)
        q = [vocab.encode(text, max_length=lq) for text in rounds]
        h = [vocab.encode(caption, max_length=lh)]
        h += [vocab.encode(f"{t['question']} {t['answer']}", max_length=lh) for t in history]
        batch: dict[str, Any] = {
            "dataset": DEFAULT_DATASET["dialog"],
            "image": self._pixels([image]),
            "question_ids": torch.stack([x[0] for x in q]).unsqueeze(0),            # (1, R, Lq)
            "question_length": torch.tensor([[max(1, x[1]) for x in q]]),           # (1, R)
            "history_ids": torch.stack([x[0] for x in h]).unsqueeze(0),             # (1, R, Lh)
            "round_mask": torch.ones(1, R, dtype=torch.bool),
        }
        if options:
            enc = [vocab.encode(o, max_length=la, add_bos=True, add_eos=True) for o in options]
            O = len(options)  # noqa: E741 (shape letter)
            opt_ids = torch.zeros(1, R, O, la, dtype=torch.long)
            opt_len = torch.zeros(1, R, O, dtype=torch.long)
            opt_ids[0, -1] = torch.stack([e[0] for e in enc])
            opt_len[0, -1] = torch.tensor([e[1] for e in enc])
            mask = torch.zeros(1, R, dtype=torch.bool)
            mask[0, -1] = True
            batch.update(options_ids=opt_ids, options_length=opt_len, options_mask=mask)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}
