"""The captioning (butd) and visual dialog (visdial) families and the shared attention-LSTM
decoder: forward/backward in both visual modes, overfitting tiny batches, greedy and beam
decoding, hparams/config/release round trips, thread safety, CUDA bf16 autocast."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from models import butd, visdial  # noqa: F401  (registers the families)
from models.butd import BUTD
from models.layers.decoder import EOS_ID, AttentionLSTMDecoder, sequence_loss
from models.processors import Vocabulary
from models.processors.text import BOS_ID, PAD_ID
from models.registry import MODELS
from models.release import load, save_pretrained
from models.visdial import VisDial

V, N, D = 20, 6, 24  # vocab, regions, feature dim
TINY: dict[str, dict[str, Any]] = {
    "butd": {"vocab_size": V, "embedding_dim": 16, "hidden_dim": 32, "image_dim": D,
             "attention_dim": 32, "use_boxes": True, "dropout": 0.0},
    "visdial": {"vocab_size": V, "embedding_dim": 16, "hidden_dim": 32, "image_dim": D,
                "attention_dim": 32, "use_boxes": True, "dropout": 0.0},
}


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """These models are tiny: per-op thread fan-out costs more than it gains, and on a busy
    2-core machine an OpenMP team waiting for a descheduled thread makes each small matmul
    ~100x slower. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, **extra: Any) -> Any:
    torch.manual_seed(0)
    return MODELS.get(name)(**{**TINY[name], **extra})


def sequences(n: int, max_len: int, g: torch.Generator, *, bos_eos: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, max_len) ids (``<s> words </s> <pad>`` with bos_eos, else ``words <pad>``), lengths."""
    low = 3 if bos_eos else 1
    lengths = torch.randint(low, max_len + 1, (n,), generator=g)
    ids = torch.randint(4, V, (n, max_len), generator=g)
    pos = torch.arange(max_len)[None, :]
    if bos_eos:
        ids[:, 0] = BOS_ID
        ids[pos == (lengths[:, None] - 1)] = EOS_ID
    ids[pos >= lengths[:, None]] = PAD_ID
    return ids, lengths


def visual(batch: dict[str, Any], mode: str, B: int, g: torch.Generator) -> None:
    if mode == "image":
        batch["image"] = torch.randn(B, 3, 64, 64, generator=g)
    else:
        batch["image_features"] = torch.randn(B, N, D, generator=g).half()  # as a store gives
        mask = torch.ones(B, N, dtype=torch.bool)
        mask[0, -2:] = False
        batch["image_feature_mask"] = mask
        xy = torch.rand(B, N, 2, generator=g) * 0.5
        batch["image_boxes"] = torch.cat([xy, xy + 0.5], dim=-1)


def caption_batch(mode: str = "features", B: int = 4, L: int = 7, seed: int = 0
                  ) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    ids, lengths = sequences(B, L, g, bos_eos=True)
    batch: dict[str, Any] = {"caption_ids": ids, "caption_length": lengths}
    visual(batch, mode, B, g)
    return batch


def dialog_batch(mode: str = "features", B: int = 2, R: int = 3, O: int = 4,  # noqa: E741
                 seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    q, q_len = sequences(B * R, 5, g, bos_eos=False)
    a, a_len = sequences(B * R, 5, g, bos_eos=True)
    h, _ = sequences(B * R, 8, g, bos_eos=False)
    opts, o_len = sequences(B * R * O, 5, g, bos_eos=True)
    gt = torch.randint(0, O, (B * R,), generator=g)
    opts, o_len = opts.view(B * R, O, 5), o_len.view(B * R, O)
    opts[torch.arange(B * R), gt], o_len[torch.arange(B * R), gt] = a, a_len  # gt = answer
    round_mask = torch.ones(B, R, dtype=torch.bool)
    round_mask[-1, -1] = False  # the last dialog is one round short
    gt = gt.view(B, R).masked_fill(~round_mask, -1)
    gt[0, 1] = -1  # a round whose answer index is unknown
    a, a_len = a.view(B, R, 5), a_len.view(B, R)
    a[~round_mask], a_len[~round_mask] = PAD_ID, 0
    batch: dict[str, Any] = {
        "question_ids": q.view(B, R, 5), "question_length": q_len.view(B, R),
        "answer_ids": a, "answer_length": a_len, "history_ids": h.view(B, R, 8),
        "options_ids": opts.view(B, R, O, 5), "options_length": o_len.view(B, R, O),
        "options_mask": round_mask.clone(), "gt_index": gt, "round_mask": round_mask,
    }
    visual(batch, mode, B, g)
    return batch


def check_grads(model: torch.nn.Module, mode: str) -> None:
    for pname, p in model.named_parameters():
        if not p.requires_grad or (mode == "features" and pname.startswith("grid_encoder.")):
            continue  # the backbone is not on the features path
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


# -- forward / backward ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["image", "features"])
def test_butd_forward_backward_both_visual_modes(mode):
    model = build("butd", backbone="resnet18").train()
    batch = caption_batch(mode)
    out = model(batch)
    assert out["logits"].shape == (4, 6, V)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    check_grads(model, mode)
    batch.pop("caption_ids")  # no captions -> the greedy caption, no loss
    with torch.no_grad():
        out = model.eval()(batch)
    assert "loss" not in out and out["ids"].shape[0] == 4 and out["scores"].shape == (4,)


@pytest.mark.parametrize("mode", ["image", "features"])
def test_visdial_forward_backward_both_visual_modes(mode):
    model = build("visdial", backbone="resnet18").train()
    batch = dialog_batch(mode)
    out = model(batch)
    assert out["scores"].shape == (2, 3, 4)
    assert (out["scores"][~batch["round_mask"]] == 0).all()  # no options there
    for key in ("loss", "disc_loss", "gen_loss"):
        assert out[key].ndim == 0 and torch.isfinite(out[key]), key
    torch.testing.assert_close(out["loss"], out["disc_loss"] + out["gen_loss"])
    out["loss"].backward()
    check_grads(model, mode)


@pytest.mark.parametrize("decoder", ["disc", "gen"])
def test_visdial_single_decoders(decoder):
    model = build("visdial", decoder=decoder).train()
    batch = dialog_batch()
    out = model(batch)
    assert out["scores"].shape == (2, 3, 4)
    assert ("disc_loss" in out) == (decoder == "disc")
    assert ("gen_loss" in out) == (decoder == "gen")
    out["loss"].backward()
    check_grads(model, "features")
    if decoder == "gen":  # scores are the options' log-likelihoods
        torch.testing.assert_close(out["scores"], model.option_loglik(batch))
        assert (out["scores"][batch["round_mask"]] < 0).all()
    else:
        with pytest.raises(RuntimeError, match="decoder='gen'"):
            model.generate_answers(batch)


def test_visdial_encodes_each_distinct_option_once_with_the_same_scores_and_gradients():
    model = build("visdial", decoder="disc").train()
    batch = dialog_batch(O=6)
    # Every round offers the same six options in another order, as a shared answer pool does.
    pool, pool_len = batch["options_ids"][0, 0].clone(), batch["options_length"][0, 0].clone()
    g = torch.Generator().manual_seed(1)
    for b in range(2):
        for r in range(3):
            perm = torch.randperm(6, generator=g)
            batch["options_ids"][b, r], batch["options_length"][b, r] = pool[perm], pool_len[perm]
    batch["gt_index"] = batch["gt_index"].clamp_max(5)
    calls: list[int] = []
    hook = model.option_rnn.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    out = model(batch)
    hook.remove()
    assert calls == [6]  # 5 rounds with options x 6 options, encoded as 6 sequences
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Reference: every copy through the LSTM, by hand.
    model.zero_grad()
    context, _, _ = model.encode(batch)
    rows = model._option_rows(batch, 2, 3, torch.device("cpu"))
    flat = batch["options_ids"].reshape(6, 6, -1)[rows].reshape(-1, 5)
    _, enc = model.option_rnn(model.embedding(flat), batch["options_length"].reshape(6, 6)[rows]
                              .reshape(-1))
    ref = torch.einsum("nh,noh->no", context.reshape(6, -1)[rows], enc.view(len(rows), 6, -1))
    torch.testing.assert_close(out["scores"].reshape(6, 6)[rows], ref)
    gt = batch["gt_index"].reshape(-1)[rows]
    known = gt >= 0
    torch.nn.functional.cross_entropy(ref[known], gt[known]).backward()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, msg=name)


def test_visdial_dense_loss_is_listnet_on_the_annotated_round():
    batch = dialog_batch(O=4)
    batch["gt_relevance"] = torch.tensor([[0.0, 1.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    batch["relevance_round"] = torch.tensor([2, -1])  # only dialog 0 is annotated
    plain = build("visdial", decoder="disc").train()
    assert "dense_loss" not in plain(batch)  # off by default (dense_loss_weight=0)
    model = build("visdial", decoder="disc", dense_loss_weight=0.5).train()
    out = model(batch)
    p = torch.tensor([0.0, 1.0, 0.5, 1.0]) / 2.5
    expected = -(p * torch.log_softmax(out["scores"][0, 2], -1)).sum()
    torch.testing.assert_close(out["dense_loss"], expected)
    torch.testing.assert_close(out["loss"], out["disc_loss"] + 0.5 * expected)
    out["loss"].backward()
    batch["relevance_round"] = torch.tensor([-1, -1])  # none annotated: a zero, with a graph
    out = model(batch)
    assert out["dense_loss"].item() == 0.0 and out["dense_loss"].requires_grad


def test_visdial_rejects_an_unknown_decoder():
    with pytest.raises(ValueError, match="decoder must be one of"):
        build("visdial", decoder="both!")


def test_sequence_loss_ignores_padding_and_never_nans():
    logits = torch.randn(2, 3, V)
    targets = torch.tensor([[5, EOS_ID, PAD_ID], [PAD_ID, PAD_ID, PAD_ID]])
    expected = torch.nn.functional.cross_entropy(logits[0, :2], targets[0, :2])
    torch.testing.assert_close(sequence_loss(logits, targets), expected)
    assert sequence_loss(logits, torch.zeros_like(targets)) == 0


# -- overfitting ----------------------------------------------------------------------------


def test_butd_overfits_four_captions():
    start = time.perf_counter()
    model = build("butd").train()
    batch = caption_batch(B=4, seed=1)
    targets = [[i for i in row[1:] if i != PAD_ID] for row in batch["caption_ids"].tolist()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    got: list[list[int]] = []
    for step in range(300):
        loss = model.train()(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            got = [g["ids"] for g in model.eval().generate(batch, max_length=10)]
            if got == targets:
                break
    assert got == targets, f"after {step + 1} steps"
    assert time.perf_counter() - start < 15


def test_visdial_discriminative_overfits_to_full_recall_at_1():
    start = time.perf_counter()
    model = build("visdial", decoder="disc").train()
    batch = dialog_batch(B=4, O=8, seed=2)
    valid = batch["gt_index"] >= 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    r1 = 0.0
    for step in range(300):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                scores = model.eval()(batch)["scores"]
            model.train()
            r1 = (scores.argmax(-1) == batch["gt_index"])[valid].float().mean().item()
            if r1 == 1.0:
                break
    assert r1 == 1.0, f"r@1 {r1} after {step + 1} steps"
    assert time.perf_counter() - start < 15


# -- decoding -------------------------------------------------------------------------------


def eos_prone_butd() -> BUTD:
    model = build("butd").eval()
    with torch.no_grad():  # make </s> likely so that some beams finish within max_length
        model.decoder.classifier.bias[EOS_ID] += 2.5
    return model


def test_beam_search_order_greedy_equivalence_and_stopping():
    model = eos_prone_butd()
    batch = caption_batch(seed=3)
    greedy = model.generate(batch, beam_size=1, max_length=8)
    beam1 = model.decoder.beam_search(*model.encode(batch), beam_size=1, max_length=8)
    for g, b in zip(greedy, beam1):
        assert g["ids"] == b[0][0]
        assert g["score"] == pytest.approx(b[0][1], abs=1e-5)
    beams = model.generate(batch, beam_size=4, max_length=8)
    finished = 0
    for sample in beams:
        assert len(sample["beams"]) == 4
        scores = [s for _, s in sample["beams"]]
        assert scores == sorted(scores, reverse=True)
        assert (sample["ids"], sample["score"]) == sample["beams"][0]
        for ids, score in sample["beams"]:
            assert 1 <= len(ids) <= 8 and score <= 0
            assert EOS_ID not in ids[:-1] and PAD_ID not in ids  # stops at </s>
            finished += ids[-1] == EOS_ID
    assert finished > 0
    # the best beam is at least as likely as the greedy caption
    for g, best in zip(greedy, beams):
        assert best["score"] >= g["score"] - 1e-5
    # a length penalty divides by len ** alpha and keeps the order sorted
    norm = model.decoder.beam_search(*model.encode(batch), beam_size=4, max_length=8,
                                     length_penalty=1.0)
    for bs in norm:
        assert [s for _, s in bs] == sorted((s for _, s in bs), reverse=True)


def test_greedy_scores_are_the_teacher_forced_log_likelihood():
    model = eos_prone_butd()
    batch = caption_batch(seed=4)
    v, mask = model.encode(batch)
    ids, scores = model.decoder.greedy(v, mask, max_length=6)
    seqs = torch.cat([torch.full((4, 1), BOS_ID), ids], dim=1)
    with torch.no_grad():
        logp = model.decoder(v, mask, seqs).log_softmax(-1)
    target = seqs[:, 1:]
    ll = (logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * (target != PAD_ID)).sum(1)
    torch.testing.assert_close(scores, ll, atol=1e-4, rtol=1e-4)


def test_decoder_initial_state_conditions_the_output():
    torch.manual_seed(0)
    dec = AttentionLSTMDecoder(vocab_size=V, embedding_dim=8, hidden_dim=16, image_dim=D,
                               attention_dim=16).eval()
    v = torch.randn(2, N, D)
    caps = torch.tensor([[BOS_ID, 5, 6, EOS_ID]] * 2)
    with torch.no_grad():
        base = dec(v, None, caps)
        cond = dec(v, None, caps, initial_state=torch.randn(2, 16))
    assert base.shape == (2, 3, V) and not torch.allclose(base, cond)
    with pytest.raises(ValueError, match="initial_state"):
        dec(v, None, caps, initial_state=torch.randn(2, 15))


def test_visdial_generate_answers_returns_id_lists():
    model = build("visdial").eval()
    batch = dialog_batch()
    answers = model.generate_answers(batch, max_length=6)
    assert len(answers) == 2 and all(len(rounds) == 3 for rounds in answers)
    assert answers[-1][-1] == []  # past round_mask
    for b, rounds in enumerate(answers):
        for r, ids in enumerate(rounds):
            if batch["round_mask"][b, r]:
                assert 1 <= len(ids) <= 6 and all(isinstance(i, int) for i in ids)
                assert all(0 <= i < V for i in ids) and EOS_ID not in ids[:-1]


def test_generate_is_thread_safe():
    model = eos_prone_butd()
    batches = [caption_batch(seed=10 + i) for i in range(2)]
    expected = [model.generate(b, beam_size=3, max_length=8) for b in batches]
    results: list[Any] = [None, None]

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = model.generate(batches[i], beam_size=3, max_length=8)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


# -- round trips ----------------------------------------------------------------------------


def outputs(model: Any, name: str, batch: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)["logits" if name == "butd" else "scores"]


@pytest.mark.parametrize("name", ["butd", "visdial"])
def test_hparams_round_trip(name):
    model = build(name, backbone="resnet18").eval()
    twin = type(model)(**model.hparams).eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    batch = caption_batch() if name == "butd" else dialog_batch()
    torch.testing.assert_close(outputs(twin, name, batch), outputs(model, name, batch))
    assert model.family == name and model.tasks
    assert set(model.config_defaults) - {"glove_path", "backbone_weights"} <= set(model.hparams)


@pytest.mark.parametrize("name", ["butd", "visdial"])
def test_from_config_with_real_vocabulary(name, tmp_path):
    vocab = Vocabulary.build(["a red cube left of a blue sphere", "is the cube red", "yes"])
    glove = tmp_path / "glove.txt"
    glove.write_text("cube " + " ".join(["0.5"] * 16) + "\n")
    tiny = {k: v for k, v in TINY[name].items() if k != "vocab_size"}
    family: Any = MODELS.get(name)
    cfg = {**family.config_defaults, **tiny, "name": name, "image_size": 64,
           "glove_path": str(glove), "backbone": None}
    key = "caption_vocab" if name == "butd" else "vocab"
    model = family.from_config(cfg, {key: vocab})
    assert model.hparams["vocab_size"] == len(vocab)
    emb = model.decoder.embedding if name == "butd" else model.embedding
    assert torch.equal(emb.embedding.weight[vocab.index["cube"]], torch.full((16,), 0.5))
    feats = {"image_features": torch.randn(1, N, D)}
    if name == "butd":
        ids, _ = vocab.encode("a red cube", max_length=6, add_bos=True, add_eos=True)
        out = model.eval()({"caption_ids": ids[None], **feats})
        assert out["logits"].shape == (1, 5, len(vocab))
        text = vocab.decode(model.generate(feats, beam_size=2, max_length=5)[0]["ids"])
        assert isinstance(text, str)
    else:
        q, q_len = vocab.encode("is the cube red", max_length=6)
        h, _ = vocab.encode("a red cube left of a blue sphere", max_length=10)
        o = torch.stack([vocab.encode(w, max_length=4, add_bos=True, add_eos=True)[0]
                         for w in ("yes", "red", "cube")])
        batch = {"question_ids": q.view(1, 1, 6), "question_length": torch.tensor([[q_len]]),
                 "history_ids": h.view(1, 1, 10), "options_ids": o.view(1, 1, 3, 4), **feats}
        with torch.no_grad():
            assert model.eval()(batch)["scores"].shape == (1, 1, 3)
        assert len(model.generate_answers(batch, max_length=4)[0][0]) <= 4


@pytest.mark.parametrize("name", ["butd", "visdial"])
def test_release_round_trip(name, tmp_path):
    model = build(name).eval()
    vocab = Vocabulary([f"w{i}" for i in range(V - 4)])
    key = "caption_vocab" if name == "butd" else "vocab"
    save_pretrained(model, tmp_path / "release", processors={key: vocab})
    base, procs = load(tmp_path / "release")
    loaded: Any = base
    assert type(base) is (BUTD if name == "butd" else VisDial)
    assert procs[key].words == vocab.words
    batch = caption_batch() if name == "butd" else dialog_batch()
    assert torch.equal(outputs(loaded, name, batch), outputs(model, name, batch))
    if name == "butd":
        assert loaded.generate(batch, beam_size=2) == model.generate(batch, beam_size=2)
    else:
        assert loaded.generate_answers(batch) == model.generate_answers(batch)


def test_published_recipe_size():
    model = BUTD(**butd.PUBLISHED_RECIPE)
    assert model.num_parameters() == 57_992_125  # ~58M: 1000-d LSTMs over 2048-d regions


# -- mixed precision ------------------------------------------------------------------------


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs CUDA")),
])
@pytest.mark.parametrize("name", ["butd", "visdial"])
def test_bf16_autocast(name, device):
    mode = "image" if device == "cuda" else "features"  # resnet18 in bf16 is slow on CPU
    model = build(name, backbone="resnet18").to(device).train()
    batch = caption_batch(mode) if name == "butd" else dialog_batch(mode)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.autocast(device, dtype=torch.bfloat16):
        out = model(batch)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    check_grads(model, mode)
    model.eval()
    with torch.autocast(device, dtype=torch.bfloat16):
        if name == "butd":
            gen = model.generate(batch, beam_size=3, max_length=6)
            assert len(gen) == 4 and all(len(g["beams"]) == 3 for g in gen)
        else:
            answers = model.generate_answers(batch, max_length=6)
            assert len(answers) == 2 and all(len(ids) <= 6 for ids in answers[0])
