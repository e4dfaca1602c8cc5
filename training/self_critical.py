"""Self-critical sequence training (SCST) for captioners: the "CIDEr optimization" stage of
BUTD (Anderson et al. 2018, section 4.1, after Rennie et al. 2017, "Self-critical Sequence
Training for Image Captioning").

A captioner trained with cross-entropy learns each next word given the reference's prefix;
beam search then looks for the most probable whole caption, and on ShapesWorld that is a
generic one ("there are five shapes in the picture"). SCST fine-tunes the model on the metric
itself: for each image it samples ``samples`` captions, scores each with CIDEr-D against the
image's references, and raises the log-probability of the captions that beat the others::

    reward r_ij     = CIDEr-D(sample j of image i, references of image i)   (x10 scale)
    baseline b_ij   = mean of r_ik over the other samples k != j of image i
    loss            = -sum_ij,t (r_ij - b_ij) * log p(w_ijt) / #tokens

The baseline is the mean of the other samples (Luo 2020, "A Better Variant of Self-Critical
Sequence Training"), which needs no extra greedy decode per batch, unlike the original's greedy
baseline. Document frequencies come from the training split's references (as the reference
SCST code's precomputed ``coco-train`` frequencies), both sides tokenized the way the caption
vocabulary tokenizes (lower case, no punctuation).

Enabled by ``trainer.self_critical.enabled`` (see training/configs/defaults.yaml), usually in a
second run that starts from a cross-entropy run's release (``run.init_from``): e.g.
``training/configs/shapes/butd_scst.yaml``. The trainer attaches a ``SelfCritical`` to the
model as ``model.self_critical``; the model samples and calls it (``models.butd``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from models.processors.text import EOS_ID, Vocabulary, tokenize
from training.evaluation.captions import CiderD

__all__ = ["SelfCritical"]


def _tokenized(text: str) -> str:
    return " ".join(tokenize(text))


class SelfCritical:
    """The reward and loss of SCST for one captioning dataset.

    ``corpus``: every training image's reference captions (raw text). ``vocab``: the caption
    vocabulary the model emits ids of. ``samples`` (>= 2: the baseline needs another sample)
    captions per image of at most ``max_length`` tokens.
    """

    def __init__(self, corpus: Iterable[Sequence[str]], vocab: Vocabulary, *, samples: int = 5,
                 max_length: int = 20) -> None:
        if samples < 2:
            raise ValueError(f"self_critical.samples must be >= 2 (the baseline of a sample is "
                             f"the mean of the others), got {samples}")
        if max_length < 1:
            raise ValueError(f"self_critical.max_length must be >= 1, got {max_length}")
        self.vocab = vocab
        self.samples = samples
        self.max_length = max_length
        self.cider = CiderD([_tokenized(r) for r in refs] for refs in corpus)

    def rewards(self, ids: torch.Tensor, references: Sequence[Sequence[str]]) -> torch.Tensor:
        """CIDEr-D of each sampled caption: ids (B * K, T) in rows b * K + j, ``references``
        B lists of raw captions -> rewards (B, K) float32 on the CPU."""
        k = self.samples
        if ids.size(0) != len(references) * k:
            raise ValueError(f"SelfCritical: {ids.size(0)} sampled rows for "
                             f"{len(references)} images x {k} samples")
        rows = ids.cpu().tolist()
        out = torch.empty(len(references), k, dtype=torch.float32)
        for b, refs in enumerate(references):
            prepared = self.cider.references([_tokenized(r) for r in refs])
            for j in range(k):
                out[b, j] = self.cider.score(self.vocab.decode(rows[b * k + j]), prepared)
        return out

    def loss(self, ids: torch.Tensor, log_probs: torch.Tensor, batch: Mapping[str, Any]
             ) -> dict[str, torch.Tensor]:
        """``{"loss", "reward"}`` for sampled ids / log_probs (B * K, T) (``AttentionLSTMDecoder
        .sample``) of the batch's images (``batch["references"]``: B lists of captions).
        ``reward`` is the samples' mean CIDEr-D (detached: for logging)."""
        references = batch.get("references")
        if references is None:
            raise ValueError("self-critical training needs the batch's 'references' (every "
                             "caption of each image): a captioning dataset's training split")
        rewards = self.rewards(ids, references).to(log_probs.device)  # (B, K)
        k = self.samples
        baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)  # leave-one-out mean
        advantage = (rewards - baseline).reshape(-1, 1)  # (B * K, 1)
        eos = (ids == EOS_ID).long()
        emitted = (eos.cumsum(1) - eos) == 0  # (B * K, T): up to and including the first </s>
        loss = -(advantage * log_probs * emitted).sum() / emitted.sum().clamp_min(1)
        return {"loss": loss, "reward": rewards.mean()}
