"""Multi-task model: one shared image encoder and one shared text encoder serving VQA (one
answer space per dataset, LoRRA reading/copying on OCR datasets), captioning and visual dialog.

Anatomy (B batch, L tokens, N regions/cells, D = image_dim, H = hidden_dim, A answers,
K OCR slots, R rounds, O options, V caption words)::

    SHARED  grid_encoder (ResNetGridEncoder, optional) + feature_encoder (FeatureEncoder):
            image / image_features -> v (B, N, D), mask (B, N)       (``encode_image``)
    SHARED  question (pythia.QuestionEncoder): embedding (shared vocabulary) + LSTM/GRU
            (+ VQA-only self-attention glimpses) -> tokens (B, L, H), q (B, G * H)

    vqa     (every dataset of ``answer_spaces``)
            image_attention (TopDownAttention(v, q)) and fusion (ProductFusion(v_att, q))
            -> joint (B, F): SHARED among VQA datasets with ``vqa_heads="shared"`` (the
            default), one pair per dataset with ``"per_dataset"`` (``image_attentions[ds]``,
            ``fusions[ds]``), so that datasets asking different things of the image do not
            pull one attention two ways
            OCR datasets (``ocr_datasets``): ocr_heads[ds] (_OCRHead): OCRTokenEncoder ->
                TopDownAttention(ocr, q) -> joint += ProductFusion(o_att, q); copy logits (B, K)
                = <W joint, ocr_k> / sqrt(O) with padded slots at ``lorra.MASKED_LOGIT``
            classifiers[ds] (TwoBranchClassifier) -> logits (B, A_ds) (+ copy: (B, A_ds + K))
    caption (``caption_datasets``, default coco)
            caption_decoder (AttentionLSTMDecoder, own ``caption_vocab_size``) over v
    dialog  (``dialog_datasets``, default visdial)
            dialog: a ``visdial.VisDial`` late-fusion encoder with the discriminative decoder,
            whose ``embedding``, ``question_rnn``, ``grid_encoder`` and ``feature_encoder`` ARE
            the shared modules (question.embedding, question.rnn, grid_encoder,
            feature_encoder); its history LSTM, image attention, fusion and option LSTM are its
            own (the option LSTM reads the shared embedding).

The shared modules are registered under every path that uses them (weight tying): the
``state_dict`` lists them under each name (e.g. ``question.embedding.embedding.weight`` and
``dialog.embedding.embedding.weight``), ``parameters()`` yields each once, and a release stores
each tensor once (``models.release`` aliases).

``forward(batch)`` routes on ``batch["dataset"]`` (a string; one dataset per batch) and returns
``"task"`` plus:

* vqa: ``logits`` (B, A_ds) or (B, A_ds + K) on OCR datasets, ``scores`` = sigmoid,
  ``attention`` (B, image_glimpses, N); with ``targets`` ``loss`` = ``logit_bce``;
* caption: with ``caption_ids`` (B, L): ``logits`` (B, L - 1, V) and ``loss`` (token
  cross-entropy, teacher forcing); without: greedy ``ids`` (B, T) and ``scores`` (B,);
* dialog: ``scores`` (B, R, O); with ``gt_index`` ``loss`` (= ``disc_loss``, the
  cross-entropy of the scores against the ground-truth option, plus
  ``dialog_dense_loss_weight`` x ``dense_loss`` on batches with dense relevance, as the
  single-task ``visdial.VisDial``'s ``dense_loss_weight``).

An unknown dataset raises ``ValueError`` naming the known ones. ``generate(batch, beam_size,
max_length)`` decodes captions as ``butd.BUTD.generate`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import torch
from torch import nn

from models.base import BaseModel
from models.layers.attention import TopDownAttention
from models.layers.classifier import TwoBranchClassifier, logit_bce
from models.layers.decoder import AttentionLSTMDecoder, sequence_loss, trim
from models.layers.fusion import ProductFusion
from models.layers.image import encode_image
from models.layers.ocr import OCRTokenEncoder
from models.lorra import MASKED_LOGIT
from models.processors.ocr import CHARSET
from models.pythia import (
    QuestionEncoder,
    VisualMixin,
    config_kwargs,
    load_files_from_config,
    question_lengths,
)
from models.registry import MODELS
from models.visdial import VisDial

__all__ = ["SHAPES_RECIPE", "MultiTask"]

ANSWER_SPACE_PREFIX = "answer_space_"
#: ``vqa_heads``: one image attention + fusion for every VQA dataset, or one per dataset.
VQA_HEADS = ("shared", "per_dataset")

#: A small ShapesWorld configuration (CPU-trainable). ``vocab_size``, ``caption_vocab_size``,
#: ``answer_spaces`` (and ``hash_buckets``) come from the processors.
SHAPES_RECIPE: dict[str, Any] = {
    "ocr_datasets": ["textvqa"],
    "caption_datasets": ["coco"],
    "dialog_datasets": ["visdial"],
    "embedding_dim": 64,
    "hidden_dim": 128,
    "rnn": "lstm",
    "num_glimpses": 2,
    "image_dim": 128,
    "backbone": "resnet18",
    "freeze_backbone": False,
    "use_boxes": True,
    "image_glimpses": 1,
    "attention_dim": 256,
    "fusion_dim": 256,
    "classifier_dim": 256,
    "classifier_text_dim": 64,
    "ocr_embedding_dim": 64,
    "ocr_dim": 64,
    "ocr_visual": True,
    "caption_hidden_dim": 128,
    "caption_attention_dim": 128,
    "caption_label_smoothing": 0.0,
    "dialog_attention_dim": 128,
    "dropout": 0.1,
}


class _OCRHead(nn.Module):
    """LoRRA's reading branch for one OCR dataset: OCR tokens attended by the question, fused
    into the joint vector, and the copy scores over the OCR slots."""

    def __init__(self, *, hash_buckets: int, char_vocab_size: int, embedding_dim: int,
                 ocr_dim: int, image_dim: int, visual: bool, q_dim: int, attention_dim: int,
                 fusion_dim: int, dropout: float) -> None:
        super().__init__()
        self.encoder = OCRTokenEncoder(hash_buckets=hash_buckets, char_vocab_size=char_vocab_size,
                                       embedding_dim=embedding_dim, out_dim=ocr_dim,
                                       image_dim=image_dim if visual else None)
        self.attention = TopDownAttention(image_dim=ocr_dim, query_dim=q_dim,
                                          hidden_dim=attention_dim, num_glimpses=1,
                                          dropout=dropout)
        self.fusion = ProductFusion(dims=[ocr_dim, q_dim], hidden_dim=fusion_dim,
                                    dropout=dropout)
        self.copy_query = nn.Linear(fusion_dim, ocr_dim)
        self.copy_scale = 1.0 / math.sqrt(ocr_dim)

    def encode(self, batch: Mapping[str, Any], q: torch.Tensor, v: torch.Tensor,
               v_boxes: torch.Tensor, v_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (fusion term (B, F), OCR tokens (B, K, O), OCR mask (B, K))."""
        ocr, ocr_mask = self.encoder(
            batch["ocr_hash_ids"], batch["ocr_char_ids"], batch["ocr_boxes"], batch["ocr_mask"],
            v, v_boxes, v_mask)  # (B, K, O), (B, K)
        o_att, _ = self.attention(ocr, q, ocr_mask)  # (B, O)
        return self.fusion(o_att, q), ocr, ocr_mask  # (B, F), ...

    def copy_logits(self, joint: torch.Tensor, ocr: torch.Tensor, ocr_mask: torch.Tensor
                    ) -> torch.Tensor:
        copy = torch.einsum("bo,bko->bk", self.copy_query(joint), ocr.to(joint.dtype))
        return (copy * self.copy_scale).masked_fill(~ocr_mask, MASKED_LOGIT)  # (B, K)


@MODELS.register("multitask")
class MultiTask(BaseModel, VisualMixin):
    family = "multitask"
    tasks = ("vqa", "textvqa", "caption", "dialog")
    multi_dataset = True
    config_defaults: ClassVar[dict[str, Any]] = {
        "ocr_datasets": ["textvqa"], "caption_datasets": ["coco"],
        "dialog_datasets": ["visdial"],
        "embedding_dim": 300, "hidden_dim": 1024, "rnn": "lstm", "num_glimpses": 2,
        "image_dim": 2048, "backbone": "resnet152", "freeze_backbone": False, "use_boxes": True,
        "image_glimpses": 1, "attention_dim": 5000, "fusion_dim": 5000, "classifier_dim": 5000,
        "classifier_text_dim": 300, "ocr_embedding_dim": 300, "ocr_dim": 300,
        "ocr_visual": True, "caption_hidden_dim": 1000, "caption_attention_dim": 512,
        "caption_label_smoothing": 0.0, "dialog_attention_dim": 512,
        "dialog_dense_loss_weight": 0.0, "vqa_heads": "shared", "dropout": 0.1,
        "glove_path": None, "backbone_weights": None,
    }  # fmt: skip

    def __init__(
        self,
        *,
        vocab_size: int,
        caption_vocab_size: int,
        answer_spaces: Mapping[str, int],
        ocr_datasets: Sequence[str] = ("textvqa",),
        caption_datasets: Sequence[str] = ("coco",),
        dialog_datasets: Sequence[str] = ("visdial",),
        hash_buckets: int = 4096,
        char_vocab_size: int = len(CHARSET) + 2,
        embedding_dim: int = 300,
        hidden_dim: int = 1024,
        rnn: str = "lstm",
        num_glimpses: int = 2,
        image_dim: int = 2048,
        backbone: str | None = None,
        freeze_backbone: bool = False,
        use_boxes: bool = True,
        image_glimpses: int = 1,
        attention_dim: int = 5000,
        fusion_dim: int = 5000,
        classifier_dim: int = 5000,
        classifier_text_dim: int = 300,
        ocr_embedding_dim: int = 300,
        ocr_dim: int = 300,
        ocr_visual: bool = True,
        caption_hidden_dim: int = 1000,
        caption_attention_dim: int = 512,
        caption_label_smoothing: float = 0.0,
        dialog_attention_dim: int = 512,
        dialog_dense_loss_weight: float = 0.0,
        vqa_heads: str = "shared",
        dropout: float = 0.1,
    ) -> None:
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.answer_spaces = {str(k): int(n) for k, n in answer_spaces.items()}
        self.ocr_datasets = tuple(ocr_datasets)
        self.caption_datasets = tuple(caption_datasets)
        self.dialog_datasets = tuple(dialog_datasets)
        routes = [*self.answer_spaces, *self.caption_datasets, *self.dialog_datasets]
        if len(set(routes)) != len(routes):
            raise ValueError(f"MultiTask: a dataset is listed under two tasks: {routes}")
        unknown_ocr = [d for d in self.ocr_datasets if d not in self.answer_spaces]
        if unknown_ocr:
            raise ValueError(f"MultiTask: ocr_datasets {unknown_ocr} have no answer space "
                             f"(answer_spaces: {sorted(self.answer_spaces)})")
        self.route: dict[str, str] = {
            **{d: "vqa" for d in self.answer_spaces},
            **{d: "caption" for d in self.caption_datasets},
            **{d: "dialog" for d in self.dialog_datasets},
        }
        self.caption_label_smoothing = caption_label_smoothing

        # -- shared encoders --------------------------------------------------------------
        self.question = QuestionEncoder(vocab_size=vocab_size, embedding_dim=embedding_dim,
                                        hidden_dim=hidden_dim, rnn=rnn,
                                        num_glimpses=num_glimpses, dropout=dropout)
        q_dim = self.question.out_dim
        self.build_visual(backbone=backbone, freeze_backbone=freeze_backbone,
                          image_dim=image_dim, use_boxes=use_boxes)

        # -- VQA: attention + fusion (shared or per dataset), one classifier per space -----
        if vqa_heads not in VQA_HEADS:
            raise ValueError(f"MultiTask: vqa_heads must be one of {VQA_HEADS}, "
                             f"got {vqa_heads!r}")
        self.vqa_heads = vqa_heads

        def attention() -> TopDownAttention:
            return TopDownAttention(image_dim=image_dim, query_dim=q_dim,
                                    hidden_dim=attention_dim, num_glimpses=image_glimpses,
                                    dropout=dropout)

        def fusion(att: TopDownAttention) -> ProductFusion:
            return ProductFusion(dims=[att.out_dim, q_dim], hidden_dim=fusion_dim,
                                 dropout=dropout)

        if vqa_heads == "shared":
            self.image_attention = attention()
            self.fusion = fusion(self.image_attention)
        else:
            self.image_attentions = nn.ModuleDict({ds: attention()
                                                   for ds in self.answer_spaces})
            self.fusions = nn.ModuleDict({
                ds: fusion(cast(TopDownAttention, att))
                for ds, att in self.image_attentions.items()})
        self.classifiers = nn.ModuleDict({
            ds: TwoBranchClassifier(input_dim=fusion_dim, hidden_dim=classifier_dim,
                                    num_outputs=n, dropout=dropout,
                                    text_hidden_dim=classifier_text_dim)
            for ds, n in self.answer_spaces.items()})
        self.ocr_heads = nn.ModuleDict({
            ds: _OCRHead(hash_buckets=hash_buckets, char_vocab_size=char_vocab_size,
                         embedding_dim=ocr_embedding_dim, ocr_dim=ocr_dim, image_dim=image_dim,
                         visual=ocr_visual, q_dim=q_dim, attention_dim=attention_dim,
                         fusion_dim=fusion_dim, dropout=dropout)
            for ds in self.ocr_datasets})

        # -- captioning ---------------------------------------------------------------------
        self.caption_decoder = AttentionLSTMDecoder(
            vocab_size=caption_vocab_size, embedding_dim=embedding_dim,
            hidden_dim=caption_hidden_dim, image_dim=image_dim,
            attention_dim=caption_attention_dim, dropout=dropout)

        # -- dialog: VisDial's late fusion + discriminative decoder on the shared encoders --
        self.dialog = VisDial(vocab_size=vocab_size, embedding_dim=embedding_dim,
                              hidden_dim=hidden_dim, image_dim=image_dim,
                              attention_dim=dialog_attention_dim, backbone=None,
                              use_boxes=use_boxes, decoder="disc", dropout=dropout,
                              dense_loss_weight=dialog_dense_loss_weight)
        self.dialog.embedding = self.question.embedding
        self.dialog.question_rnn = self.question.rnn
        self.dialog.grid_encoder = self.grid_encoder
        self.dialog.feature_encoder = self.feature_encoder

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]
                    ) -> MultiTask:
        """``processors``: "vocab" (shared), "caption_vocab", one "answer_space_<dataset>"
        per VQA dataset and "ocr" when an OCR dataset is among them."""
        answer_spaces = {name[len(ANSWER_SPACE_PREFIX):]: len(p)
                         for name, p in sorted(processors.items())
                         if name.startswith(ANSWER_SPACE_PREFIX)}
        wanted = model_cfg.get("ocr_datasets")
        if wanted is None:
            wanted = cls.config_defaults["ocr_datasets"]
        ocr_datasets = [d for d in wanted if d in answer_spaces]
        derived: dict[str, Any] = {"vocab_size": len(processors["vocab"]),
                                   "caption_vocab_size": len(processors["caption_vocab"]),
                                   "answer_spaces": answer_spaces, "ocr_datasets": ocr_datasets}
        if ocr_datasets:
            derived["hash_buckets"] = processors["ocr"].hash_buckets
            derived["char_vocab_size"] = len(CHARSET) + 2
        model = cls(**config_kwargs(cls, model_cfg, **derived))
        load_files_from_config(model, model_cfg, processors)  # shared embedding + backbone
        if model_cfg.get("glove_path"):
            model.caption_decoder.embedding.load_glove(model_cfg["glove_path"],
                                                       processors["caption_vocab"])
        return model

    # -- routing ------------------------------------------------------------------------------

    def task_of(self, dataset: Any) -> str:
        """The route ("vqa", "caption" or "dialog") of a dataset name; ValueError if unknown."""
        if not isinstance(dataset, str) or dataset not in self.route:
            raise ValueError(f"MultiTask: unknown dataset {dataset!r}; this model serves "
                             f"{sorted(self.route)}")
        return self.route[dataset]

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        dataset = batch.get("dataset")
        task = self.task_of(dataset)
        assert isinstance(dataset, str)
        out: dict[str, Any]
        if task == "vqa":
            out = self._vqa(batch, dataset)
        elif task == "caption":
            out = self._caption(batch)
        else:
            out = dict(self.dialog(batch))  # scores (B, R, O) [, disc_loss, loss]
        out["task"] = task
        return out

    def encode(self, batch: Mapping[str, Any]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The shared visual set: features (B, N, D), mask (B, N), boxes (B, N, 4)."""
        return encode_image(batch, self.grid_encoder, self.feature_encoder)

    def _vqa(self, batch: Mapping[str, Any], dataset: str) -> dict[str, Any]:
        _, _, q = self.question(batch["question_ids"], question_lengths(batch))  # (B, Q)
        v, v_mask, v_boxes = self.encode(batch)  # (B, N, D), (B, N), (B, N, 4)
        attention: nn.Module
        fusion: nn.Module
        if self.vqa_heads == "shared":
            attention, fusion = self.image_attention, self.fusion
        else:
            attention, fusion = self.image_attentions[dataset], self.fusions[dataset]
        v_att, weights = attention(v, q, v_mask)  # (B, G_img * D), (B, G_img, N)
        joint = fusion(v_att, q)  # (B, F)
        head = cast(_OCRHead, self.ocr_heads[dataset]) if dataset in self.ocr_heads else None
        if head is not None:
            term, ocr, ocr_mask = head.encode(batch, q, v, v_boxes, v_mask)
            joint = joint + term  # (B, F)
        logits = self.classifiers[dataset](joint)  # (B, A)
        if head is not None:
            copy = head.copy_logits(joint, ocr, ocr_mask)  # (B, K)
            logits = torch.cat([logits, copy.to(logits.dtype)], dim=1)  # (B, A + K)
        out: dict[str, Any] = {"logits": logits, "scores": torch.sigmoid(logits.float()),
                               "attention": weights}
        targets = batch.get("targets")
        if targets is not None:
            if targets.shape != logits.shape:
                raise ValueError(f"MultiTask[{dataset}]: targets {tuple(targets.shape)} must "
                                 f"match the logits {tuple(logits.shape)}")
            out["loss"] = logit_bce(logits, targets)
        return out

    def _caption(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        v, mask, _ = self.encode(batch)  # (B, N, D), (B, N)
        captions = batch.get("caption_ids")
        if captions is None:
            ids, scores = self.caption_decoder.greedy(v, mask, max_length=20)
            return {"ids": ids, "scores": scores}  # (B, T), (B,)
        logits = self.caption_decoder(v, mask, captions)  # (B, L - 1, V)
        loss = sequence_loss(logits, captions[:, 1:],
                             label_smoothing=self.caption_label_smoothing)
        return {"logits": logits, "loss": loss}

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], *, beam_size: int = 1, max_length: int = 20
                 ) -> list[dict[str, Any]]:
        """Captions, as ``BUTD.generate``: per sample ``{"ids", "score", "beams"}``."""
        v, mask, _ = self.encode(batch)
        if beam_size == 1:
            ids, scores = self.caption_decoder.greedy(v, mask, max_length)
            out = []
            for row, score in zip(ids.cpu().tolist(), scores.cpu().tolist()):
                seq = trim(row)
                out.append({"ids": seq, "score": score, "beams": [(seq, score)]})
            return out
        beams = self.caption_decoder.beam_search(v, mask, beam_size, max_length)
        return [{"ids": bs[0][0], "score": bs[0][1], "beams": bs} for bs in beams]
