"""Visual dialog: the late-fusion encoder (Das et al. 2017, "Visual Dialog"; the VisDial starter
code's ``lf`` encoder) with a discriminative and/or a generative decoder.

Anatomy (B dialogs, R rounds, O options, N regions, D = image_dim, H = hidden_dim)::

    question_ids (B, R, Lq) -> shared WordEmbedding -> question LSTM -> q (B, R, H)
    history_ids (B, R, Lh) -> history LSTM per row -> rows (B, R, H)
        -> h_r = mean of rows 0..r (row 0 the caption, row r the Q/A of round r - 1)
    visual set (B, N, D) -> TopDownAttention(v, q_r) -> v_r (B, R, D)
    context = tanh(Linear([q, h, v_att])) (B, R, H)
    disc: options_ids (B, R, O, La) -> option LSTM (same embedding) -> (B, R, O, H);
          scores = <context, option> (B, R, O)
    gen:  AttentionLSTMDecoder over the image, language LSTM initialised with the context,
          teacher-forced on answer_ids (B, R, La)

``decoder`` is ``"disc"``, ``"gen"`` or ``"both"`` (default). ``forward(batch)`` returns
``scores`` (B, R, O) (the discriminative scores; with ``decoder="gen"`` the options'
log-likelihoods, computed without gradients), zeros on rounds without options
(``options_mask``/``round_mask`` false), and with targets ``loss`` = ``disc_loss`` + ``gen_loss``:
``disc_loss`` the cross-entropy of the scores against ``gt_index`` over rounds with options and
``gt_index >= 0``; ``gen_loss`` the token cross-entropy of the answers (rounds with
``answer_length > 0``). With ``dense_loss_weight`` > 0 and a batch carrying dense relevance
(``gt_relevance`` (B, O), ``relevance_round`` (B,), -1 where none: VisDial's train dense
sample), ``loss`` adds ``dense_loss_weight * dense_loss``: the cross-entropy of the scores of the
annotated round against the relevance normalised to a distribution (ListNet's top-one loss),
averaged over the dialogs that have one. The sparse loss alone treats every other wording of
the right answer as a negative, which is what NDCG punishes.
``generate_answers(batch, max_length=20)`` -> per dialog, per round, greedy answer ids
(empty for rounds past ``round_mask``). ``option_loglik(batch)`` -> (B, R, O) summed
log-probabilities of each option under the generative decoder.

Memory: options are encoded as one batch of the distinct rows among (rounds with options) * O
sequences of La tokens (``_encode_options``; ShapesWorld's 205-answer pool makes that ~200,
real VisDial's options rarely repeat). VisDial training (B = 32, R = 10, O = 100, La = 20) is
then up to 32,000 LSTM sequences, i.e.
640k token steps: with E = 300, H = 512 the embeddings and LSTM activations kept for backward
are ~ 640k * (E + 6 H) floats ~ 9 GB in float32; lower B (or O by sampling) on small GPUs.
``option_loglik`` runs the attention decoder over every option, in chunks of
``option_chunk`` sequences, which bounds its memory (not its time).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.base import BaseModel
from models.layers.attention import TopDownAttention
from models.layers.decoder import PAD_ID, AttentionLSTMDecoder, sequence_loss, trim
from models.layers.image import encode_image
from models.layers.text import SequenceEncoder, WordEmbedding
from models.pythia import VisualMixin, config_kwargs
from models.registry import MODELS

__all__ = ["PUBLISHED_RECIPE", "SHAPES_RECIPE", "VisDial"]

DECODERS = ("disc", "gen", "both")

#: Constructor kwargs close to the VisDial v1.0 starter code's ``lf_disc``/``lf_gen``
#: (300-d embeddings, 512-d LSTMs, 2048-d bottom-up region features, vocabulary of the words
#: seen >= 5 times in train: 11,322).
PUBLISHED_RECIPE: dict[str, Any] = {
    "vocab_size": 11322,
    "embedding_dim": 300,
    "hidden_dim": 512,
    "image_dim": 2048,
    "attention_dim": 512,
    "backbone": None,
    "freeze_backbone": False,
    "use_boxes": False,
    "decoder": "both",
    "dropout": 0.2,
}

#: A small ShapesWorld configuration; ``vocab_size`` comes from ``processors["vocab"]``.
SHAPES_RECIPE: dict[str, Any] = {
    "embedding_dim": 64,
    "hidden_dim": 128,
    "image_dim": 128,
    "attention_dim": 128,
    "backbone": "resnet18",
    "freeze_backbone": False,
    "use_boxes": True,
    "decoder": "both",
    "dropout": 0.1,
}


def _lengths(batch: Mapping[str, Any], ids_key: str, length_key: str) -> torch.Tensor:
    """``batch[length_key]``, or the count of non-pad ids of ``batch[ids_key]``."""
    length = batch.get(length_key)
    return torch.as_tensor(length) if length is not None else (batch[ids_key] != PAD_ID).sum(-1)


def _dense_loss(scores: torch.Tensor, relevance: torch.Tensor, rounds: Any) -> torch.Tensor:
    """scores (B, R, O), relevance (B, O), rounds (B,) 0-based (-1: none) -> scalar: the mean
    over annotated dialogs of -sum_o p_o log softmax(scores of that round)_o, p = relevance /
    its sum (a round whose relevance is all zero counts as not annotated)."""
    rounds = torch.as_tensor(rounds, device=scores.device).long()
    relevance = relevance.to(scores.device).float()
    total = relevance.sum(-1)  # (B,)
    has = (rounds >= 0) & (total > 0)
    if not bool(has.any()):
        return scores.sum() * 0.0
    idx = has.nonzero().squeeze(1)
    s = scores[idx, rounds[idx]].float()  # (n, O)
    p = relevance[idx] / total[idx, None]
    return -(p * torch.log_softmax(s, dim=-1)).sum(-1).mean()


@MODELS.register("visdial")
class VisDial(BaseModel, VisualMixin):
    family = "visdial"
    tasks = ("dialog",)
    config_defaults: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in PUBLISHED_RECIPE.items() if k != "vocab_size"},
        "backbone": "resnet152",  # raw-image mode (the trainer's default) needs one
        "glove_path": None,
        "backbone_weights": None,
        "dense_loss_weight": 0.0,
    }

    def __init__(
        self,
        *,
        vocab_size: int,
        embedding_dim: int = 300,
        hidden_dim: int = 512,
        image_dim: int = 2048,
        attention_dim: int = 512,
        backbone: str | None = None,
        freeze_backbone: bool = False,
        use_boxes: bool = False,
        decoder: str = "both",
        dropout: float = 0.2,
        option_chunk: int = 4096,
        dense_loss_weight: float = 0.0,
    ) -> None:
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if decoder not in DECODERS:
            raise ValueError(f"VisDial: decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder_kind = decoder
        self.option_chunk = option_chunk
        self.dense_loss_weight = float(dense_loss_weight)
        self.embedding = WordEmbedding(vocab_size=vocab_size, embedding_dim=embedding_dim)
        self.question_rnn = SequenceEncoder(input_dim=embedding_dim, hidden_dim=hidden_dim)
        self.history_rnn = SequenceEncoder(input_dim=embedding_dim, hidden_dim=hidden_dim)
        self.build_visual(backbone=backbone, freeze_backbone=freeze_backbone,
                          image_dim=image_dim, use_boxes=use_boxes)
        self.image_attention = TopDownAttention(image_dim=image_dim, query_dim=hidden_dim,
                                                hidden_dim=attention_dim, dropout=dropout)
        self.fusion = nn.Sequential(nn.Dropout(dropout),
                                    nn.Linear(2 * hidden_dim + image_dim, hidden_dim), nn.Tanh())
        self.option_rnn = (SequenceEncoder(input_dim=embedding_dim, hidden_dim=hidden_dim)
                           if decoder in ("disc", "both") else None)
        self.generator = (AttentionLSTMDecoder(vocab_size=vocab_size, embedding_dim=embedding_dim,
                                               hidden_dim=hidden_dim, image_dim=image_dim,
                                               attention_dim=attention_dim, dropout=dropout)
                          if decoder in ("gen", "both") else None)

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]
                    ) -> VisDial:
        vocab = processors["vocab"]
        model = cls(**config_kwargs(cls, model_cfg, vocab_size=len(vocab)))
        if model_cfg.get("glove_path"):
            model.embedding.load_glove(model_cfg["glove_path"], vocab)
        if model_cfg.get("backbone_weights"):
            if model.grid_encoder is None:
                raise ValueError("model.backbone_weights is set but model.backbone is null")
            model.grid_encoder.load_backbone_weights(model_cfg["backbone_weights"])
        return model

    # -- encoder ------------------------------------------------------------------------------

    def encode(self, batch: Mapping[str, Any]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(context (B, R, H), visual set (B, N, D), its mask (B, N))."""
        q_ids = batch["question_ids"]  # (B, R, Lq)
        B, R, Lq = q_ids.shape
        _, q = self.question_rnn(self.embedding(q_ids.reshape(B * R, Lq)),
                                 _lengths(batch, "question_ids", "question_length").reshape(-1))
        h_ids = batch["history_ids"]  # (B, R, Lh)
        _, rows = self.history_rnn(self.embedding(h_ids.reshape(B * R, -1)),
                                   (h_ids != PAD_ID).sum(-1).reshape(-1))  # (B*R, H)
        counts = torch.arange(1, R + 1, device=rows.device, dtype=rows.dtype).view(1, R, 1)
        history = rows.view(B, R, -1).cumsum(1) / counts  # (B, R, H): mean of rows 0..r
        v, v_mask, _ = encode_image(batch, self.grid_encoder, self.feature_encoder)  # (B, N, D)
        # The attention needs one (N, D) set per round: B*R*N*D floats, copied once.
        per_round = torch.arange(B, device=v.device).repeat_interleave(R)  # (B*R,)
        v_att, _ = self.image_attention(v[per_round], q, v_mask[per_round])  # (B*R, D)
        joint = torch.cat([q, history.reshape(B * R, -1).to(q.dtype), v_att.to(q.dtype)], -1)
        context = self.fusion(joint).view(B, R, -1)  # (B, R, H)
        return context, v, v_mask

    # -- decoders -----------------------------------------------------------------------------

    def _disc_scores(self, batch: Mapping[str, Any], context: torch.Tensor) -> torch.Tensor:
        assert self.option_rnn is not None
        o_ids = batch["options_ids"]  # (B, R, O, La)
        B, R, O, La = o_ids.shape  # noqa: E741 (shape letters)
        rows = self._option_rows(batch, B, R, o_ids.device)  # (n,)
        o_len = _lengths(batch, "options_ids", "options_length").reshape(B * R, O)[rows]
        flat = o_ids.reshape(B * R, O, La)[rows].reshape(-1, La)  # (n*O, La)
        options = self._encode_options(flat, o_len.reshape(-1))  # (n*O, H)
        ctx = context.reshape(B * R, -1)[rows]  # (n, H)
        s = torch.einsum("nh,noh->no", ctx, options.view(rows.numel(), O, -1).to(ctx.dtype))
        scores = s.new_zeros(B * R, O).index_copy(0, rows, s)
        return scores.view(B, R, O)  # (B, R, O)

    def _encode_options(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (M, La), lengths (M,) -> (M, H) through the option LSTM, each distinct row once.

        Options repeat heavily within a batch (every round draws its 100 from one answer
        pool, and ShapesWorld's pool has 205 answers), so encoding the U distinct rows and
        gathering them back costs U LSTM sequences instead of M; values and gradients are
        those of encoding every copy (the gather sums the copies' gradients)."""
        assert self.option_rnn is not None
        uniq, inverse = torch.unique(ids, dim=0, return_inverse=True)  # (U, La), (M,)
        u_len = lengths.new_zeros(uniq.size(0)).scatter_(0, inverse.to(lengths.device), lengths)
        _, out = self.option_rnn(self.embedding(uniq), u_len)  # (U, H)
        return out[inverse]

    @staticmethod
    def _option_rows(batch: Mapping[str, Any], B: int, R: int, device: torch.device
                     ) -> torch.Tensor:
        """Flat indices b * R + r of the rounds that have options (``options_mask`` and
        ``round_mask``; all rounds when the batch has neither)."""
        has = torch.ones(B, R, dtype=torch.bool, device=device)
        for key in ("options_mask", "round_mask"):
            if batch.get(key) is not None:
                has = has & batch[key].to(device=device, dtype=torch.bool)
        return has.reshape(-1).nonzero().squeeze(1)  # a host sync (nonzero)

    def _gen_loss(self, batch: Mapping[str, Any], context: torch.Tensor, v: torch.Tensor,
                  v_mask: torch.Tensor) -> torch.Tensor:
        assert self.generator is not None
        a_ids = batch["answer_ids"]  # (B, R, La)
        B, R, La = a_ids.shape
        valid = _lengths(batch, "answer_ids", "answer_length").to(a_ids.device) > 0  # (B, R)
        if batch.get("round_mask") is not None:
            valid = valid & batch["round_mask"].to(valid.device, torch.bool)
        rows = valid.reshape(-1).nonzero().squeeze(1)  # (n,)
        if rows.numel() == 0:
            return context.sum() * 0.0
        image = torch.div(rows, R, rounding_mode="floor")  # (n,) dialog of each row
        answers = a_ids.reshape(B * R, La)[rows]  # (n, La)
        logits = self.generator(v[image], v_mask[image], answers,
                                initial_state=context.reshape(B * R, -1)[rows])  # (n, La-1, V)
        return sequence_loss(logits, answers[:, 1:])

    @torch.no_grad()
    def option_loglik(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """(B, R, O) summed log-probabilities of each option's tokens after ``<s>`` under the
        generative decoder; zeros on rounds without options."""
        if self.generator is None:
            raise RuntimeError("VisDial.option_loglik needs decoder='gen' or 'both'")
        context, v, v_mask = self.encode(batch)
        return self._option_loglik(batch, context, v, v_mask)

    def _option_loglik(self, batch: Mapping[str, Any], context: torch.Tensor, v: torch.Tensor,
                       v_mask: torch.Tensor) -> torch.Tensor:
        assert self.generator is not None
        o_ids = batch["options_ids"]  # (B, R, O, La)
        B, R, O, La = o_ids.shape  # noqa: E741 (shape letters)
        rows = self._option_rows(batch, B, R, o_ids.device)  # (n,)
        seqs = o_ids.reshape(B * R, O, La)[rows].reshape(-1, La)  # (n*O, La)
        round_of = rows.repeat_interleave(O)  # (n*O,) flat round of each option
        ctx = context.reshape(B * R, -1)
        parts = []
        for start in range(0, seqs.size(0), self.option_chunk):
            idx = slice(start, start + self.option_chunk)
            r = round_of[idx]
            image = torch.div(r, R, rounding_mode="floor")
            logits = self.generator(v[image], v_mask[image], seqs[idx], initial_state=ctx[r])
            target = seqs[idx, 1:]  # (c, La-1)
            logp = logits.float().log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            parts.append((logp * (target != PAD_ID)).sum(-1))  # (c,)
        lik = torch.cat(parts) if parts else context.new_zeros(0, dtype=torch.float32)
        out = lik.new_zeros(B * R, O).index_copy(0, rows, lik.view(-1, O))
        return out.view(B, R, O)

    # -- the contract -------------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        context, v, v_mask = self.encode(batch)  # (B, R, H), (B, N, D), (B, N)
        out: dict[str, torch.Tensor] = {}
        losses = []
        if "options_ids" in batch:
            if self.option_rnn is not None:
                out["scores"] = self._disc_scores(batch, context)  # (B, R, O)
            else:
                with torch.no_grad():
                    out["scores"] = self._option_loglik(batch, context, v, v_mask)
        gt = batch.get("gt_index")
        if self.option_rnn is not None and gt is not None and "scores" in out:
            scores = out["scores"]  # (B, R, O)
            valid = gt >= 0
            for key in ("options_mask", "round_mask"):
                if batch.get(key) is not None:
                    valid = valid & batch[key].to(torch.bool)
            if bool(valid.any()):
                out["disc_loss"] = F.cross_entropy(scores[valid].float(), gt[valid])
            else:
                out["disc_loss"] = scores.sum() * 0.0
            losses.append(out["disc_loss"])
            if self.dense_loss_weight > 0 and batch.get("gt_relevance") is not None:
                out["dense_loss"] = _dense_loss(scores, batch["gt_relevance"],
                                                batch["relevance_round"])
                losses.append(self.dense_loss_weight * out["dense_loss"])
        if self.generator is not None and batch.get("answer_ids") is not None:
            out["gen_loss"] = self._gen_loss(batch, context, v, v_mask)
            losses.append(out["gen_loss"])
        if losses:
            out["loss"] = torch.stack([x.float() for x in losses]).sum()
        return out

    @torch.no_grad()
    def generate_answers(self, batch: Mapping[str, Any], *, max_length: int = 20
                         ) -> list[list[list[int]]]:
        """Greedy answers: ``[dialog][round] -> ids`` (without ``<s>``, ending with ``</s>``
        when finished; ``[]`` for rounds past ``round_mask``)."""
        if self.generator is None:
            raise RuntimeError("VisDial.generate_answers needs decoder='gen' or 'both'")
        context, v, v_mask = self.encode(batch)
        B, R, _ = context.shape
        live = torch.ones(B, R, dtype=torch.bool, device=context.device)
        if batch.get("round_mask") is not None:
            live = batch["round_mask"].to(context.device, torch.bool)
        rows = live.reshape(-1).nonzero().squeeze(1)
        answers: list[list[list[int]]] = [[[] for _ in range(R)] for _ in range(B)]
        if rows.numel() == 0:
            return answers
        image = torch.div(rows, R, rounding_mode="floor")
        ids, _ = self.generator.greedy(v[image], v_mask[image], max_length,
                                       initial_state=context.reshape(B * R, -1)[rows])
        for flat, row in zip(rows.tolist(), ids.cpu().tolist()):
            answers[flat // R][flat % R] = trim(row)
        return answers
