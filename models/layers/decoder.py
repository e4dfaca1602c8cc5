"""Caption/answer generation: the BUTD two-LSTM decoder (Anderson et al. 2018, "Bottom-Up and
Top-Down Attention for Image Captioning and VQA", section 3.2).

One step (B sequences, N regions of dimension D, hidden size H, V words)::

    x1 = [h2_prev (H), mean of the unmasked regions (D), embedding of the previous word (E)]
    h1 = attention LSTM(x1)                               # (B, H)
    a  = softmax over unmasked regions of w^T (P_v v * P_h h1)  (TopDownAttention's layers)
    x2 = [sum_n a_n v_n (D), h1 (H)]
    h2 = language LSTM(x2)                                # (B, H)
    logits = W h2                                         # (B, V)

The image projection ``P_v v`` is computed once per sequence, not once per step (as BUTD does).
Every decoding method keeps its state in local tensors (the module holds only parameters),
so one model can serve several threads at once. ``initial_state`` (B, H), when given, is the
language LSTM's initial hidden state (a dialog context conditioning the answer).

Token ids follow ``models.processors.text``: ``<pad>`` = 0, ``<s>`` = 2, ``</s>`` = 3.
Generated id sequences exclude ``<s>``, end with ``</s>`` when one was produced (at most
``max_length`` tokens) and are padded with ``<pad>`` after it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.attention import TopDownAttention, masked_softmax
from models.layers.text import WordEmbedding

__all__ = ["AttentionLSTMDecoder", "Beam", "sequence_loss", "trim"]

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3  # models.processors.text (the layers do not import processors)

#: One beam: (token ids without <s>, ending with </s> when finished; score).
Beam = tuple[list[int], float]
_State = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # h1, c1, h2, c2


class _Memory(NamedTuple):
    """The image side of a decode, computed once: features (B, N, D), their attention
    projection (B, N, A), the masked mean (B, D) and the mask (B, N) bool."""

    v: torch.Tensor
    vp: torch.Tensor
    v_mean: torch.Tensor
    mask: torch.Tensor

    def repeat(self, k: int) -> _Memory:
        """Each sample repeated ``k`` times in a row (beam layout b * k + j)."""
        return _Memory(*(t.repeat_interleave(k, dim=0) for t in self))


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, *,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T), averaged over the non-pad
    targets (0 when there are none, never NaN); computed in float32."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                         ignore_index=PAD_ID, label_smoothing=label_smoothing, reduction="sum")
    return ce / (targets != PAD_ID).sum().clamp_min(1)


class AttentionLSTMDecoder(nn.Module):
    """BUTD's attention LSTM + language LSTM over a masked set of image features.

    * ``forward(features (B, N, D), mask (B, N) | None, captions (B, L), initial_state=None)``
      -> logits (B, L - 1, V): teacher forcing, tokens 1..L-1 predicted from 0..L-2.
    * ``greedy(features, mask, max_length, initial_state=None)`` -> (ids (B, T) with T <=
      max_length, scores (B,) = summed log-probabilities of the emitted tokens).
    * ``beam_search(features, mask, beam_size, max_length, length_penalty=0.0,
      initial_state=None)`` -> per sample, ``beam_size`` beams ``(ids, score)`` sorted by
      score descending; score = summed log-probability / length ** length_penalty.
    * ``sample(features, mask, num_samples, max_length, initial_state=None)`` -> (ids (B * K,
      T), per-token log-probabilities (B * K, T)) of captions drawn from the model, with
      gradients (self-critical training).

    ``greedy`` and ``beam_search`` run without gradients.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        image_dim: int,
        attention_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.embedding = WordEmbedding(vocab_size=vocab_size, embedding_dim=embedding_dim)
        self.attention_lstm = nn.LSTMCell(hidden_dim + image_dim + embedding_dim, hidden_dim)
        self.attention = TopDownAttention(image_dim=image_dim, query_dim=hidden_dim,
                                          hidden_dim=attention_dim, dropout=dropout)
        self.language_lstm = nn.LSTMCell(image_dim + hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_dim, vocab_size)

    # -- pieces -------------------------------------------------------------------------------

    def _memory(self, features: torch.Tensor, mask: torch.Tensor | None) -> _Memory:
        B, N, _ = features.shape
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=features.device)
        mask = mask.to(torch.bool)
        m = mask.unsqueeze(-1).to(features.dtype)  # (B, N, 1)
        v_mean = (features * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D)
        vp = self.attention.image_proj(features)  # (B, N, A)
        return _Memory(features, vp, v_mean, mask)

    def _initial_state(self, mem: _Memory, initial_state: torch.Tensor | None) -> _State:
        B = mem.v.size(0)
        zeros = mem.v.new_zeros(B, self.hidden_dim)
        h2 = zeros
        if initial_state is not None:
            if initial_state.shape != (B, self.hidden_dim):
                raise ValueError(f"AttentionLSTMDecoder: initial_state must be (B, H) = "
                                 f"{(B, self.hidden_dim)}, got {tuple(initial_state.shape)}")
            h2 = initial_state
        return zeros, zeros, h2, zeros

    def _step(self, word: torch.Tensor, state: _State, mem: _Memory
              ) -> tuple[torch.Tensor, _State]:
        """word embedding (B, E) -> (language LSTM output (B, H), new state)."""
        h1, c1, h2, c2 = state
        x1 = torch.cat([h2, mem.v_mean.to(h2.dtype), word.to(h2.dtype)], dim=-1)
        h1, c1 = self.attention_lstm(x1, (h1, c1))  # (B, H)
        att = self.attention
        # TopDownAttention (combine="product") with the image projection precomputed.
        joint = mem.vp * att.query_proj(h1).unsqueeze(1)  # (B, N, A)
        logits = att.logits(att.dropout(joint)).squeeze(-1)  # (B, N)
        weights = masked_softmax(logits, mem.mask, dim=-1)  # (B, N)
        attended = torch.bmm(weights.unsqueeze(1).to(mem.v.dtype), mem.v).squeeze(1)  # (B, D)
        x2 = torch.cat([attended.to(h1.dtype), h1], dim=-1)
        h2, c2 = self.language_lstm(x2, (h2, c2))  # (B, H)
        return h2, (h1, c1, h2, c2)

    def _log_probs(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(h).float().log_softmax(-1)  # (B, V) float32

    # -- teacher forcing ----------------------------------------------------------------------

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        captions: torch.Tensor,
        initial_state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if captions.size(1) < 2:
            raise ValueError("AttentionLSTMDecoder: captions need at least 2 tokens (<s> ...)")
        mem = self._memory(features, mask)
        state = self._initial_state(mem, initial_state)
        words = self.embedding(captions[:, :-1])  # (B, L-1, E)
        outputs = []
        for t in range(words.size(1)):
            h, state = self._step(words[:, t], state, mem)
            outputs.append(h)
        hs = torch.stack(outputs, dim=1)  # (B, L-1, H)
        return self.classifier(self.dropout(hs))  # (B, L-1, V)

    # -- decoding -----------------------------------------------------------------------------

    @torch.no_grad()
    def greedy(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        max_length: int,
        initial_state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mem = self._memory(features, mask)
        state = self._initial_state(mem, initial_state)
        B = features.size(0)
        word = torch.full((B,), BOS_ID, dtype=torch.long, device=features.device)
        finished = torch.zeros(B, dtype=torch.bool, device=features.device)
        scores = torch.zeros(B, dtype=torch.float32, device=features.device)
        ids: list[torch.Tensor] = []
        for _ in range(max_length):
            h, state = self._step(self.embedding(word), state, mem)
            best, word = self._log_probs(h).max(-1)  # (B,), (B,)
            word = word.masked_fill(finished, PAD_ID)
            scores = scores + best.masked_fill(finished, 0.0)
            ids.append(word)
            finished = finished | (word == EOS_ID)
            if bool(finished.all()):  # a host sync per step; saves the remaining steps
                break
        out = (torch.stack(ids, dim=1) if ids
               else torch.zeros(B, 0, dtype=torch.long, device=features.device))
        return out, scores  # (B, T), (B,)

    def sample(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        num_samples: int,
        max_length: int,
        initial_state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` captions per image drawn from the model's distribution, WITH
        gradients (self-critical training): rows b * num_samples + j, like ``beam_search``.

        Returns ids (B * K, T) (``</s>`` then ``<pad>`` after a finished caption, T <=
        max_length) and log_probs (B * K, T) float32: the log-probability of each emitted
        token, 0 at the padding after ``</s>``. Draws from torch's global RNG.
        """
        if num_samples < 1 or max_length < 1:
            raise ValueError(f"sample: num_samples and max_length must be >= 1, got "
                             f"{num_samples} and {max_length}")
        mem = self._memory(features, mask).repeat(num_samples)
        state = self._initial_state(
            mem, None if initial_state is None
            else initial_state.repeat_interleave(num_samples, dim=0))
        rows = mem.v.size(0)
        device = features.device
        word = torch.full((rows,), BOS_ID, dtype=torch.long, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        ids: list[torch.Tensor] = []
        log_probs: list[torch.Tensor] = []
        for _ in range(max_length):
            h, state = self._step(self.embedding(word), state, mem)
            logp = self._log_probs(self.dropout(h))  # (rows, V), as in teacher forcing
            word = torch.multinomial(logp.detach().exp(), 1).squeeze(1)  # (rows,)
            word = word.masked_fill(finished, PAD_ID)
            chosen = logp.gather(1, word.unsqueeze(1)).squeeze(1)
            log_probs.append(chosen.masked_fill(finished, 0.0))
            ids.append(word)
            finished = finished | (word == EOS_ID)
            if bool(finished.all()):
                break
        return torch.stack(ids, dim=1), torch.stack(log_probs, dim=1)

    @torch.no_grad()
    def beam_search(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        beam_size: int,
        max_length: int,
        length_penalty: float = 0.0,
        initial_state: torch.Tensor | None = None,
    ) -> list[list[Beam]]:
        """All samples' beams advance together as B * K rows (row b * K + j). A finished beam
        keeps its slot and continues with ``<pad>`` at log-probability 0, so its score is
        frozen while the others may overtake it."""
        K, V = beam_size, self.vocab_size
        if not 1 <= K <= V:
            raise ValueError(f"beam_search: beam_size must be in [1, {V}], got {K}")
        B = features.size(0)
        device = features.device
        base = self._memory(features, mask)
        state = self._initial_state(base, initial_state)
        mem = base.repeat(K)
        state = tuple(s.repeat_interleave(K, dim=0) for s in state)  # type: ignore[assignment]
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0  # step 0: only one live beam per sample, so no duplicates
        word = torch.full((B * K,), BOS_ID, dtype=torch.long, device=device)
        finished = torch.zeros(B * K, dtype=torch.bool, device=device)
        history = torch.zeros(B * K, 0, dtype=torch.long, device=device)
        offsets = (torch.arange(B, device=device) * K).unsqueeze(1)  # (B, 1)
        for _ in range(max_length):
            h, state = self._step(self.embedding(word), state, mem)
            logp = self._log_probs(h)  # (B*K, V)
            pad_only = torch.full_like(logp, float("-inf"))
            pad_only[:, PAD_ID] = 0.0
            logp = torch.where(finished.unsqueeze(1), pad_only, logp)
            total = (scores.reshape(B * K, 1) + logp).reshape(B, K * V)
            scores, flat = total.topk(K, dim=1)  # (B, K)
            source = (flat // V + offsets).reshape(-1)  # (B*K,) parent rows
            word = (flat % V).reshape(-1)  # (B*K,)
            history = torch.cat([history[source], word.unsqueeze(1)], dim=1)  # (B*K, t+1)
            state = tuple(s[source] for s in state)  # type: ignore[assignment]
            finished = finished[source] | (word == EOS_ID)
            if bool(finished.all()):  # host sync, as in greedy
                break
        raw_cpu, history_cpu = scores.cpu(), history.cpu().reshape(B, K, -1)
        results: list[list[Beam]] = []
        for b in range(B):
            beams: list[Beam] = []
            for j in range(K):
                ids = trim(history_cpu[b, j].tolist())
                score = float(raw_cpu[b, j])
                if length_penalty:
                    score /= max(len(ids), 1) ** length_penalty
                beams.append((ids, score))
            beams.sort(key=lambda beam: beam[1], reverse=True)  # stable: topk order on ties
            results.append(beams)
        return results


def trim(ids: list[int]) -> list[int]:
    """A generated row up to and including its first ``</s>`` (the whole row without one)."""
    return ids[: ids.index(EOS_ID) + 1] if EOS_ID in ids else ids
