"""Every registered family, driven by the registry (as timm's tests are): forward and
backward on a tiny batch of each task it serves, finite loss and gradients, output shapes,
and overfitting a tiny batch to 100 % training accuracy on CPU.

A new family must add its tiny constructor arguments to ``TINY`` (the test fails until it
does)."""

import pytest
import torch

import models
from models.processors.text import BOS_ID, EOS_ID

B, N, D = 6, 5, 12            # batch, regions, feature dim
A, K, L = 7, 4, 6             # answers, OCR slots, question length
V = 30                        # vocabulary
R, O, LA = 2, 100, 5          # dialog rounds, options (as VisDial), answer length  # noqa: E741

COMMON = dict(embedding_dim=16, hidden_dim=24, image_dim=D, dropout=0.0)
TINY = {
    "pythia": dict(COMMON, vocab_size=V, num_answers=A, num_glimpses=1, attention_dim=24,
                   fusion_dim=24, classifier_dim=24, classifier_text_dim=8),
    "lorra": dict(COMMON, vocab_size=V, num_answers=A, num_glimpses=1, attention_dim=24,
                  fusion_dim=24, classifier_dim=24, classifier_text_dim=8, hash_buckets=64,
                  ocr_embedding_dim=8, ocr_dim=16),
    "ban": dict(COMMON, vocab_size=V, num_answers=A, num_glimpses=2, classifier_dim=24),
    "butd": dict(COMMON, vocab_size=V, attention_dim=24),
    "visdial": dict(COMMON, vocab_size=V, attention_dim=24),
    "multitask": dict(COMMON, vocab_size=V, caption_vocab_size=V,
                      answer_spaces={"vqa2": A, "textvqa": A}, num_glimpses=1, attention_dim=24,
                      fusion_dim=24, classifier_dim=24, classifier_text_dim=8, hash_buckets=64,
                      ocr_embedding_dim=8, ocr_dim=16, caption_hidden_dim=24,
                      caption_attention_dim=24, dialog_attention_dim=24),
}
DATASET = {"vqa": "vqa2", "textvqa": "textvqa", "caption": "coco", "dialog": "visdial"}


def _families():
    return [n for n in models.list_models() if not n.startswith("tiny_")]  # test-only names


def _batch(task: str, g: torch.Generator) -> dict:
    batch = {"dataset": DATASET[task],
             "image_features": torch.randn(B, N, D, generator=g),
             "image_feature_mask": torch.ones(B, N, dtype=torch.bool),
             "image_boxes": torch.rand(B, N, 4, generator=g)}
    if task in ("vqa", "textvqa"):
        batch["question_ids"] = torch.randint(4, V, (B, L), generator=g)
        batch["question_length"] = torch.full((B,), L)
        best = torch.randint(0, A, (B,), generator=g)
        targets = torch.nn.functional.one_hot(best, A).float()
        if task == "textvqa":
            batch.update(ocr_hash_ids=torch.randint(1, 64, (B, K, 6), generator=g),
                         ocr_char_ids=torch.randint(1, 30, (B, K, 8), generator=g),
                         ocr_boxes=torch.rand(B, K, 4, generator=g),
                         ocr_mask=torch.ones(B, K, dtype=torch.bool),
                         ocr_tokens=[[f"w{b}{k}" for k in range(K)] for b in range(B)])
            copy = torch.zeros(B, K)
            copy[::2, 0] = 1.0              # half the samples answer by copying OCR token 0
            targets[::2] = 0.0
            targets = torch.cat([targets, copy], dim=1)
        batch["targets"] = targets
    elif task == "caption":
        words = torch.randint(4, V, (B, 5), generator=g)
        batch["caption_ids"] = torch.cat([torch.full((B, 1), BOS_ID), words,
                                          torch.full((B, 1), EOS_ID)], dim=1)
    else:
        batch.update(question_ids=torch.randint(4, V, (B, R, L), generator=g),
                     question_length=torch.full((B, R), L),
                     history_ids=torch.randint(4, V, (B, R, 8), generator=g),
                     options_ids=torch.cat([torch.full((B, R, O, 1), BOS_ID),
                                            torch.randint(4, V, (B, R, O, LA - 2), generator=g),
                                            torch.full((B, R, O, 1), EOS_ID)], dim=-1),
                     options_length=torch.full((B, R, O), LA),
                     options_mask=torch.ones(B, R, dtype=torch.bool),
                     round_mask=torch.ones(B, R, dtype=torch.bool),
                     gt_index=torch.randint(0, O, (B, R), generator=g))
        batch["answer_ids"] = batch["options_ids"].gather(
            2, batch["gt_index"][..., None, None].expand(B, R, 1, LA)).squeeze(2)
    return batch


def _accuracy(task: str, out: dict, batch: dict) -> float:
    if task in ("vqa", "textvqa"):
        return float((out["logits"].argmax(1) == batch["targets"].argmax(1)).float().mean())
    if task == "caption":
        target = batch["caption_ids"][:, 1:]
        return float((out["logits"].argmax(-1) == target).float().mean())
    return float((out["scores"].argmax(-1) == batch["gt_index"]).float().mean())


def test_every_family_has_a_tiny_config():
    assert set(_families()) <= set(TINY), "add the new family's tiny arguments to TINY"


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_backward_and_overfit(name):
    assert name in models.list_models()
    torch.manual_seed(0)
    model = models.create_model(name, **TINY[name])
    assert model.family == name and model.tasks
    for task in model.tasks:
        batch = _batch(task, torch.Generator().manual_seed(1))
        out = model(batch)
        loss = out["loss"]
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(torch.isfinite(gr).all() for gr in grads if gr is not None)
        if len(model.tasks) == 1:
            assert all(gr is not None for gr in grads)  # one head: every parameter is used
        else:
            assert any(gr is not None for gr in grads)  # a multi-head model uses one route
        model.zero_grad()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            model(batch)["loss"].backward()
            opt.step()
            with torch.no_grad():
                if _accuracy(task, model(batch), batch) == 1.0:
                    break
        with torch.no_grad():
            assert _accuracy(task, model(batch), batch) == 1.0, f"{name} did not fit {task}"
