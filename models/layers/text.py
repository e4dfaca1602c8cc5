"""Question encoding: word embedding, recurrent encoder, self-attention glimpses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.layers.attention import masked_softmax

__all__ = ["SelfAttentionGlimpses", "SequenceEncoder", "WordEmbedding"]


class WordEmbedding(nn.Module):
    """Token ids (B, L) int64 -> (B, L, embedding_dim); ``padding_idx`` (``<pad>`` = 0) embeds
    to zeros and gets no gradient.

    With ``glove_path`` (a local GloVe text file) and ``vocab`` (``models.processors.Vocabulary``)
    the rows are initialised from GloVe (``load_glove``); never downloads. Models keep GloVe out
    of their hyper-parameters and call ``load_glove`` from ``from_config`` instead, so a release
    rebuilds without the file.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        embedding_dim: int,
        glove_path: str | Path | None = None,
        vocab: Any = None,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        if glove_path is not None:
            self.load_glove(glove_path, vocab)

    def load_glove(self, glove_path: str | Path, vocab: Any) -> int:
        """Copy GloVe vectors into the table; returns how many vocabulary words were found."""
        from models.processors.text import load_glove

        if vocab is None:
            raise ValueError("WordEmbedding: glove_path needs the vocabulary (vocab=...)")
        if len(vocab) != self.embedding.num_embeddings:
            raise ValueError(f"WordEmbedding: vocabulary has {len(vocab)} words, the table "
                             f"{self.embedding.num_embeddings} rows")
        weight, found = load_glove(glove_path, vocab, self.embedding.embedding_dim)
        with torch.no_grad():
            self.embedding.weight.copy_(weight)
        return found

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)  # (B, L, E)


class SequenceEncoder(nn.Module):
    """LSTM/GRU over padded sequences, packed by length.

    ``forward(x (B, L, input_dim), lengths (B,))`` -> (outputs (B, L, out_dim) with zeros past
    each length, last (B, out_dim): the final hidden state, both directions concatenated).
    ``out_dim = hidden_dim * (2 if bidirectional else 1)``. Lengths are clamped to [1, L] so an
    empty question is read as its first (pad) token rather than crashing the packing.
    """

    def __init__(
        self,
        *,
        input_dim: int,
        hidden_dim: int,
        rnn: str = "lstm",
        bidirectional: bool = False,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        if rnn not in ("lstm", "gru"):
            raise ValueError(f"SequenceEncoder: rnn must be 'lstm' or 'gru', got {rnn!r}")
        cls = nn.LSTM if rnn == "lstm" else nn.GRU
        self.rnn: nn.LSTM | nn.GRU = cls(input_dim, hidden_dim, num_layers=num_layers,
                                         batch_first=True, bidirectional=bidirectional)
        self.out_dim = hidden_dim * (2 if bidirectional else 1)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, _ = x.shape
        lens = lengths.detach().to("cpu", torch.int64).clamp(1, L)  # packing wants CPU lengths
        packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        outputs, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, out)
        h = hidden[0] if isinstance(hidden, tuple) else hidden  # (layers * dirs, B, H)
        dirs = 2 if self.rnn.bidirectional else 1
        last = h[-dirs:].transpose(0, 1).reshape(B, -1)  # (B, out_dim)
        return outputs, last


def length_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_length) bool, true on the first ``max(1, length)`` positions."""
    lens = lengths.clamp(1, max_length).unsqueeze(1)
    return torch.arange(max_length, device=lengths.device).unsqueeze(0) < lens


class SelfAttentionGlimpses(nn.Module):
    """Pythia's question self-attention: a 2-layer MLP gives ``num_glimpses`` scores per token,
    each glimpse is a masked softmax over the tokens, and the weighted sums are concatenated.

    ``forward(h (B, L, hidden_dim), mask (B, L) bool)`` -> (B, num_glimpses * hidden_dim).
    """

    def __init__(self, *, hidden_dim: int, num_glimpses: int = 2, attention_dim: int = 512,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_glimpses = num_glimpses
        self.out_dim = num_glimpses * hidden_dim
        self.score = nn.Sequential(
            nn.Linear(hidden_dim, attention_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(attention_dim, num_glimpses),
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B = h.size(0)
        logits = self.score(h).transpose(1, 2)  # (B, G, L)
        weights = masked_softmax(logits, None if mask is None else mask.unsqueeze(1), dim=-1)
        return torch.bmm(weights.to(h.dtype), h).reshape(B, -1)  # (B, G * hidden_dim)
