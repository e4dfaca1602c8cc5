"""The multitask family: one shared image encoder and text encoder routed to VQA (per-dataset
answer spaces, OCR copy on textvqa), captioning and visual dialog."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models import multitask  # noqa: F401  (registers the family)
from models.layers.decoder import BOS_ID, EOS_ID, PAD_ID
from models.multitask import MultiTask
from models.release import load, save_pretrained

V, CV, N, D, K = 20, 18, 6, 24, 4  # vocab, caption vocab, regions, feature dim, OCR slots
ANSWERS = {"vqa2": 7, "vizwiz": 5, "textvqa": 6}
DATASETS = ("vqa2", "vizwiz", "textvqa", "coco", "visdial")
R, O, B = 2, 6, 4  # noqa: E741  (rounds, options, batch)
TINY: dict[str, Any] = {
    "vocab_size": V, "caption_vocab_size": CV, "answer_spaces": ANSWERS,
    "ocr_datasets": ["textvqa"], "hash_buckets": 32, "embedding_dim": 16, "hidden_dim": 32,
    "image_dim": D, "attention_dim": 32, "fusion_dim": 32, "classifier_dim": 32,
    "classifier_text_dim": 16, "ocr_embedding_dim": 16, "ocr_dim": 16,
    "caption_hidden_dim": 32, "caption_attention_dim": 32, "dialog_attention_dim": 32,
    "dropout": 0.0,
}  # fmt: skip


def build(**extra: Any) -> MultiTask:
    torch.manual_seed(0)
    return MultiTask(**{**TINY, **extra})


def seqs(n: int, L: int, g: torch.Generator, *, bos_eos: bool = False, vocab: int = V
         ) -> tuple[torch.Tensor, torch.Tensor]:
    low = 3 if bos_eos else 1
    lengths = torch.randint(low, L + 1, (n,), generator=g)
    ids = torch.randint(4, vocab, (n, L), generator=g)
    pos = torch.arange(L)[None, :]
    if bos_eos:
        ids[:, 0] = BOS_ID
        ids[pos == (lengths[:, None] - 1)] = EOS_ID
    ids[pos >= lengths[:, None]] = PAD_ID
    return ids, lengths


def visual(g: torch.Generator, raw: bool) -> dict[str, Any]:
    if raw:
        return {"image": torch.randn(B, 3, 64, 64, generator=g)}
    xy = torch.rand(B, N, 2, generator=g) * 0.5
    return {"image_features": torch.randn(B, N, D, generator=g),
            "image_feature_mask": torch.ones(B, N, dtype=torch.bool),
            "image_boxes": torch.cat([xy, xy + 0.5], dim=-1)}


def make_batch(dataset: str, seed: int = 0, raw: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed + 17 * DATASETS.index(dataset))
    batch: dict[str, Any] = {"dataset": dataset, **visual(g, raw)}
    if dataset in ANSWERS:
        q, ql = seqs(B, 7, g)
        A = ANSWERS[dataset]
        width = A + (K if dataset == "textvqa" else 0)
        targets = torch.zeros(B, width)
        targets[torch.arange(B), torch.randint(0, width - 1, (B,), generator=g)] = 1.0
        batch.update(question_ids=q, question_length=ql, targets=targets)
        if dataset == "textvqa":
            ocr_mask = torch.ones(B, K, dtype=torch.bool)
            ocr_mask[0, -1] = False
            xy = torch.rand(B, K, 2, generator=g) * 0.6
            batch.update(ocr_hash_ids=torch.randint(1, 32, (B, K, 5), generator=g),
                         ocr_char_ids=torch.randint(1, 30, (B, K, 6), generator=g),
                         ocr_boxes=torch.cat([xy, xy + 0.3], dim=-1), ocr_mask=ocr_mask)
            # every target lands on a real slot
            targets.zero_()
            targets[torch.arange(B), torch.tensor([0, A, A + 1, 2])] = 1.0
    elif dataset == "coco":
        c, cl = seqs(B, 7, g, bos_eos=True, vocab=CV)
        batch.update(caption_ids=c, caption_length=cl)
    else:
        q, ql = seqs(B * R, 5, g)
        h, _ = seqs(B * R, 8, g)
        a, al = seqs(B * R * O, 5, g)
        batch.update(question_ids=q.view(B, R, -1), question_length=ql.view(B, R),
                     history_ids=h.view(B, R, -1), options_ids=a.view(B, R, O, -1),
                     options_length=al.view(B, R, O),
                     options_mask=torch.ones(B, R, dtype=torch.bool),
                     round_mask=torch.ones(B, R, dtype=torch.bool),
                     gt_index=torch.randint(0, O, (B, R), generator=g))
    return batch


def check_shapes(out: dict[str, Any], dataset: str) -> None:
    if dataset in ANSWERS:
        assert out["task"] == "vqa"
        width = ANSWERS[dataset] + (K if dataset == "textvqa" else 0)
        assert out["logits"].shape == out["scores"].shape == (B, width)
    elif dataset == "coco":
        assert out["task"] == "caption"
        assert out["logits"].shape == (B, 6, CV)
    else:
        assert out["task"] == "dialog"
        assert out["scores"].shape == (B, R, O)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])


def shared_params(m: MultiTask) -> dict[str, Any]:
    image: Any = m.grid_encoder.proj if m.grid_encoder is not None else m.feature_encoder.box_embed
    return {"embedding": m.question.embedding.embedding.weight,
            "text_rnn": m.question.rnn.rnn.weight_ih_l0, "image": image.weight}


@pytest.mark.parametrize("raw", [False, True], ids=["features", "resnet18"])
def test_every_route_forward_backward_reaches_shared_encoders(raw: bool) -> None:
    m = build(backbone="resnet18" if raw else None).train()
    for ds in DATASETS:
        m.zero_grad(set_to_none=True)
        out = m(make_batch(ds, raw=raw))
        check_shapes(out, ds)
        out["loss"].backward()
        grads = {k: p.grad for k, p in shared_params(m).items()}
        assert grads["image"] is not None and grads["image"].abs().sum() > 0, ds
        if ds != "coco":  # captions read no question
            for k in ("embedding", "text_rnn"):
                g = grads[k]
                assert g is not None and g.abs().sum() > 0, (ds, k)


def test_encoders_are_literally_shared() -> None:
    m = build()
    assert m.dialog.embedding is m.question.embedding
    assert m.dialog.question_rnn is m.question.rnn
    assert m.dialog.feature_encoder is m.feature_encoder
    # parameters() yields each shared tensor once
    ids = [id(p) for p in m.parameters()]
    assert len(ids) == len(set(ids))
    # a caption-only loss reaches the shared image encoder, a VQA-only loss the embedding
    m.zero_grad(set_to_none=True)
    m(make_batch("coco"))["loss"].backward()
    assert m.feature_encoder.box_embed.weight.grad is not None  # type: ignore[union-attr]
    assert m.question.embedding.embedding.weight.grad is None
    m.zero_grad(set_to_none=True)
    m(make_batch("vizwiz"))["loss"].backward()
    grad = m.question.embedding.embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert m.caption_decoder.classifier.weight.grad is None
    assert m.classifiers["vqa2"].out_a.parametrizations.weight.original0.grad is None


def test_per_dataset_vqa_heads() -> None:
    m = build(vqa_heads="per_dataset").train()
    assert not hasattr(m, "image_attention") and set(m.image_attentions) == set(ANSWERS)
    assert set(m.fusions) == set(ANSWERS)
    shared = build()
    n_shared = sum(p.numel() for p in shared.parameters())
    n_each = sum(p.numel() for p in [*shared.image_attention.parameters(),
                                      *shared.fusion.parameters()])
    # two more attention + fusion pairs (three VQA datasets), nothing else changes
    assert sum(p.numel() for p in m.parameters()) == n_shared + 2 * n_each
    for ds in ANSWERS:
        m.zero_grad(set_to_none=True)
        out = m(make_batch(ds))
        check_shapes(out, ds)
        out["loss"].backward()
        for other in ANSWERS:
            grad = m.fusions[other].parameters().__next__().grad
            assert (grad is not None and grad.abs().sum() > 0) == (other == ds), (ds, other)
        # the encoders stay shared
        assert m.question.embedding.embedding.weight.grad is not None
    with pytest.raises(ValueError, match="vqa_heads must be one of"):
        build(vqa_heads="private")


def test_per_dataset_vqa_heads_release_round_trip(tmp_path: Any) -> None:
    m = build(vqa_heads="per_dataset").eval()
    save_pretrained(m, tmp_path / "rel")
    loaded, _ = load(tmp_path / "rel")
    assert isinstance(loaded, MultiTask) and loaded.vqa_heads == "per_dataset"
    batch = make_batch("vqa2", seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)["logits"], m(batch)["logits"])


def test_alternating_training_overfits_every_dataset() -> None:
    m = build().train()
    batches = {ds: make_batch(ds) for ds in DATASETS}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for step in range(300):
        ds = DATASETS[step % len(DATASETS)]
        opt.zero_grad()
        m(batches[ds])["loss"].backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        for ds in ("vqa2", "vizwiz", "textvqa"):
            out = m(batches[ds])
            assert torch.equal(out["logits"].argmax(1), batches[ds]["targets"].argmax(1)), ds
        captions = batches["coco"]["caption_ids"]
        for row, item in zip(captions.tolist(), m.generate(batches["coco"], max_length=10)):
            assert item["ids"] == [t for t in row[1:] if t != PAD_ID]
        scores = m(batches["visdial"])["scores"]
        assert torch.equal(scores.argmax(-1), batches["visdial"]["gt_index"])


def test_unknown_dataset_is_refused() -> None:
    m = build()
    batch = make_batch("vqa2")
    for bad in ("gqa", None):
        batch["dataset"] = bad
        with pytest.raises(ValueError, match="vizwiz"):
            m(batch)
    with pytest.raises(ValueError, match="ocr_datasets"):
        build(ocr_datasets=["st_vqa"])


def outputs(m: MultiTask) -> list[torch.Tensor]:
    m.eval()
    with torch.no_grad():
        res = []
        for ds in DATASETS:
            out = m(make_batch(ds, seed=3))
            res.append(out["scores"] if ds == "visdial" else out["logits"])
        return res


def test_hparams_round_trip() -> None:
    m = build()
    twin = type(m)(**m.hparams)
    twin.load_state_dict(m.state_dict(), strict=True)
    for a, b in zip(outputs(m), outputs(twin)):
        assert torch.equal(a, b)


def test_from_config() -> None:
    class Sized:
        def __init__(self, n: int) -> None:
            self.n = n
            self.hash_buckets = 32

        def __len__(self) -> int:
            return self.n

    processors = {"vocab": Sized(V), "caption_vocab": Sized(CV), "ocr": Sized(0),
                  **{f"answer_space_{k}": Sized(n) for k, n in ANSWERS.items()}}
    cfg = {k: v for k, v in TINY.items()
           if k not in ("vocab_size", "caption_vocab_size", "answer_spaces", "hash_buckets")}
    m = MultiTask.from_config({**MultiTask.config_defaults, **cfg, "backbone": None},
                              processors)
    assert m.hparams["answer_spaces"] == ANSWERS and m.hparams["hash_buckets"] == 32
    assert m.hparams["ocr_datasets"] == ["textvqa"]


def test_release_round_trip(tmp_path: Any) -> None:
    m = build()
    save_pretrained(m, tmp_path / "release")
    loaded, _ = load(tmp_path / "release")
    assert isinstance(loaded, MultiTask)
    assert loaded.dialog.embedding is loaded.question.embedding
    for a, b in zip(outputs(m), outputs(loaded)):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast() -> None:
    m = build(backbone="resnet18").cuda().train()
    for ds in DATASETS:
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v
                 for k, v in make_batch(ds, raw=True).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(batch)
        check_shapes(out, ds)
        out["loss"].backward()


def test_dialog_dense_loss_weight() -> None:
    batch = make_batch("visdial")
    relevance = torch.zeros(B, O)
    relevance[0, :2] = torch.tensor([1.0, 0.5])
    batch.update(gt_relevance=relevance, relevance_round=torch.tensor([1] + [-1] * (B - 1)))
    assert "dense_loss" not in build().train()(batch)  # off by default
    model = build(dialog_dense_loss_weight=0.5).train()
    out = model(batch)
    p = relevance[0] / 1.5
    expected = -(p * torch.log_softmax(out["scores"][0, 1].float(), -1)).sum()
    torch.testing.assert_close(out["dense_loss"], expected)
    torch.testing.assert_close(out["loss"], out["disc_loss"] + 0.5 * expected)
