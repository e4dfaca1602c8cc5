"""Self-critical sequence training (training/self_critical.py) and run.init_from: the reward,
the leave-one-out baseline, the decoder's sampling, and the two-stage BUTD recipe through
training/train.py on a tiny ShapesWorld COCO."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.layers.decoder import EOS_ID, PAD_ID, AttentionLSTMDecoder
from models.processors.text import Vocabulary
from tests.training.runs import records as _records
from tests.training.runs import tiny_world
from training.data import shapes
from training.evaluation.captions import CiderD, cider_d
from training.self_critical import SelfCritical
from training.train import main

REFS = {1: ["A red circle is left of a blue square.", "Two shapes: a circle and a square."],
        2: ["There are three green triangles.", "Three triangles, all of them green."]}
VOCAB = Vocabulary.build([c for refs in REFS.values() for c in refs] + ["dog"])


def _ids(*captions: str, length: int = 12) -> torch.Tensor:
    rows = [VOCAB.encode(c, max_length=length, add_eos=True)[0] for c in captions]
    return torch.stack(rows)


def test_cider_d_document_frequencies_come_from_the_corpus() -> None:
    refs = ["a red circle"]
    # "a" is in both images' references (idf 0), the rest only in this one; no 4-grams, so
    # the mean over n = 1..4 of the cosines is 3/4: x10 = 7.5 (as cider_d on the same set).
    scorer = CiderD([refs, ["a blue square"]])
    assert scorer.score("a red circle", scorer.references(refs)) == pytest.approx(7.5)
    assert cider_d({0: refs, 1: ["a blue square"]},
                   {0: ["a red circle"], 1: ["a blue square"]})[1][0] == pytest.approx(7.5)
    # The same caption in every image of the corpus: every n-gram has idf 0, nothing scores,
    # whatever the references being scored against.
    same = CiderD([refs, refs, refs])
    assert same.score("a red circle", same.references(refs)) == 0.0
    with pytest.raises(ValueError, match="no reference set"):
        CiderD([])


def test_rewards_score_each_sample_against_its_own_image() -> None:
    critic = SelfCritical(REFS.values(), VOCAB, samples=2, max_length=12)
    ids = _ids("a red circle is left of a blue square", "dog dog",
               "there are three green triangles", "a red circle is left of a blue square")
    rewards = critic.rewards(ids, [REFS[1], REFS[2]])
    assert rewards.shape == (2, 2)
    assert rewards[0, 0] > 1.0 and rewards[1, 0] > 1.0  # a reference of its own image
    assert rewards[0, 1] == 0.0  # no n-gram in common
    assert rewards[1, 1] < rewards[1, 0] / 4  # image 1's caption on image 2
    with pytest.raises(ValueError, match="3 sampled rows for 2 images x 2"):
        critic.rewards(ids[:3], [REFS[1], REFS[2]])
    with pytest.raises(ValueError, match=">= 2"):
        SelfCritical(REFS.values(), VOCAB, samples=1)


def test_loss_raises_the_samples_that_beat_the_others() -> None:
    critic = SelfCritical(REFS.values(), VOCAB, samples=3, max_length=12)
    ids = _ids("a red circle is left of a blue square", "dog", "two shapes a circle and dog")
    log_probs = torch.full(ids.shape, -1.0, requires_grad=True)
    out = critic.loss(ids, log_probs, {"references": [REFS[1]]})
    rewards = critic.rewards(ids, [REFS[1]])[0]
    assert float(out["reward"]) == pytest.approx(float(rewards.mean()))
    out["loss"].backward()
    grad = log_probs.grad
    assert grad is not None
    emitted = [int((row != PAD_ID).sum()) for row in ids]
    tokens = sum(emitted)
    for j in range(3):
        advantage = float(rewards[j] - (rewards.sum() - rewards[j]) / 2)
        # d loss / d log p = -advantage / #tokens on emitted tokens, 0 after </s>
        assert grad[j, : emitted[j]].tolist() == pytest.approx(
            [-advantage / tokens] * emitted[j], rel=1e-5)
        assert grad[j, emitted[j]:].abs().sum() == 0
    assert grad[0, 0] < 0 < grad[1, 0]  # the best sample is pushed up, the worst down
    with pytest.raises(ValueError, match="references"):
        critic.loss(ids, log_probs, {})


def test_decoder_sample_log_probs_are_the_teacher_forced_ones() -> None:
    torch.manual_seed(0)
    dec = AttentionLSTMDecoder(vocab_size=len(VOCAB), embedding_dim=8, hidden_dim=16,
                               image_dim=12, attention_dim=8, dropout=0.0)
    feats, mask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    torch.manual_seed(1)
    ids, log_probs = dec.sample(feats, mask, num_samples=3, max_length=6)
    torch.manual_seed(1)
    again, _ = dec.sample(feats, mask, num_samples=3, max_length=6)
    assert torch.equal(ids, again)  # the global RNG decides
    assert ids.shape == log_probs.shape and ids.size(0) == 6 and ids.size(1) <= 6
    assert log_probs.requires_grad and bool((log_probs <= 0).all())
    # Teacher forcing on <s> + the samples gives the same per-token log-probabilities.
    captions = torch.cat([torch.full((6, 1), 2), ids], dim=1)
    logits = dec(feats.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), captions)
    forced = logits.log_softmax(-1).gather(2, ids.unsqueeze(2)).squeeze(2)
    after_eos = (ids == EOS_ID).long().cumsum(1) - (ids == EOS_ID).long() > 0
    assert torch.allclose(log_probs, forced.masked_fill(after_eos, 0.0), atol=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        dec.sample(feats, mask, num_samples=0, max_length=6)


# -- through the trainer ------------------------------------------------------------------------

TINY_BUTD = ["model.name=butd", "model.image_size=64", "model.backbone=shapes_cnn",
             "model.embedding_dim=16", "model.hidden_dim=32", "model.image_dim=32",
             "model.attention_dim=32", "model.use_boxes=true", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_world(tmp_path_factory, "shapes", "coco,vqa2")


def _args(root: Path, save_dir: Path, *extra: str) -> list[str]:
    return [*TINY_BUTD, f"datasets.coco.data_dir={root / 'coco'}", f"run.save_dir={save_dir}",
            "trainer.device=cpu", "data.num_workers=0", "trainer.batch_size=16",
            "trainer.log_every=1", "trainer.checkpoint_every=100", "scheduler.type=constant",
            "scheduler.warmup_updates=0", "optimizer.lr=0.01", *extra]


@pytest.fixture(scope="module")
def xe_release(coco_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("xe") / "run"
    assert main(_args(coco_root, run, "trainer.max_updates=30", "trainer.eval_every=30")) == 0
    return run / "release"


def test_self_critical_run_from_a_release(coco_root: Path, xe_release: Path,
                                          tmp_path: Path) -> None:
    run = tmp_path / "scst"
    assert main(_args(coco_root, run, f"run.init_from={xe_release}", "trainer.max_updates=1",
                      "trainer.eval_every=1", "optimizer.lr=0.0")) == 0
    # lr 0: the run's release holds exactly the weights it started from (batch norm's
    # running statistics move in training mode whatever the lr).
    before = load_file(str(xe_release / "model.safetensors"))
    after = load_file(str(run / "release" / "model.safetensors"))
    assert before.keys() == after.keys()
    weights = [k for k in before if "running_" not in k and "num_batches" not in k]
    assert len(weights) > 20 and all(torch.equal(before[k], after[k]) for k in weights)

    run = tmp_path / "scst2"
    assert main(_args(coco_root, run, f"run.init_from={xe_release}", "trainer.max_updates=60",
                      "trainer.eval_every=60", "trainer.self_critical.enabled=true",
                      "trainer.self_critical.samples=4", "optimizer.lr=0.003")) == 0
    train = _records(run, "train")
    rewards = [r["reward/coco"] for r in train]
    assert len(rewards) == 60 and all(r >= 0 for r in rewards)
    # Optimizing CIDEr-D on 16 images: the samples' mean reward rises (here ~0.18 -> ~0.23).
    assert sum(rewards[-20:]) / 20 > sum(rewards[:20]) / 20 + 0.03, rewards
    assert "coco/cider" in _records(run, "eval")[-1]
    assert (run / "release" / "model.safetensors").is_file()


def test_init_from_and_self_critical_errors(coco_root: Path, xe_release: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def error(*extra: str, args: list[str] | None = None) -> str:
        assert main(args or _args(coco_root, tmp_path / "bad", *extra)) != 0
        return capsys.readouterr().err

    assert "run.init_from" in error(f"run.init_from={tmp_path / 'nowhere'}")
    pythia = ["model.name=pythia", "model.image_size=64", "model.backbone=shapes_cnn",
              f"datasets.vqa2.data_dir={coco_root / 'vqa2'}", f"run.save_dir={tmp_path / 'p'}",
              "trainer.device=cpu", "data.num_workers=0", "trainer.batch_size=4"]
    msg = error(args=[*pythia, f"run.init_from={xe_release}"])
    assert "'butd' release" in msg and "pythia" in msg
    msg = error(args=[*pythia, "trainer.self_critical.enabled=true"])
    assert "self_critical" in msg and "'pythia' does not train" in msg
    assert "does not fit model.*" in error(f"run.init_from={xe_release}", "model.hidden_dim=48")
    msg = error("trainer.self_critical.enabled=true", "trainer.self_critical.samples=1")
    assert "trainer.self_critical" in msg and ">= 2" in msg
    # A release built on other data: its caption vocabulary differs.
    other = tmp_path / "other"
    shapes.generate(other, seed=5, train_images=4, val_images=2, test_images=1, image_size=64,
                    workers=1, datasets="coco")
    assert main(_args(other, tmp_path / "other_run", "trainer.max_updates=1",
                      "trainer.eval_every=1")) == 0
    msg = error(f"run.init_from={tmp_path / 'other_run' / 'release'}")
    assert "caption_vocab" in msg and "differs" in msg


def test_self_critical_resumes_exactly(coco_root: Path, xe_release: Path, tmp_path: Path) -> None:
    # Sampling draws from the RNG that checkpoints save: 6 updates in one go equal 3 + 3.
    full, part = tmp_path / "full", tmp_path / "part"
    common = [f"run.init_from={xe_release}", "trainer.self_critical.enabled=true",
              "trainer.self_critical.samples=3", "trainer.eval_every=100"]
    assert main(_args(coco_root, full, *common, "trainer.max_updates=6")) == 0
    assert main(_args(coco_root, part, *common, "trainer.max_updates=3")) == 0
    assert main(_args(coco_root, part, *common, "trainer.max_updates=6", "run.resume=true")) == 0
    a = torch.load(full / "checkpoints" / "current.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoints" / "current.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6, msg=k)
    ra = [r["reward/coco"] for r in _records(full, "train")]
    rb = [r["reward/coco"] for r in _records(part, "train")]
    assert len(ra) == 6 and rb == pytest.approx(ra, rel=1e-6)


def test_pythia_over_the_captioners_frozen_backbone(coco_root: Path, xe_release: Path,
                                                    tmp_path: Path) -> None:
    """pythia_pretrained.yaml: Pythia reads the captioner's trunk from its release and trains
    over it frozen (weights and BatchNorm statistics unchanged), while its head learns."""
    config = Path(__file__).resolve().parents[2] / "training/configs/shapes/pythia_pretrained.yaml"

    def train(save_dir: Path, *extra: str) -> dict[str, torch.Tensor]:
        assert main(["--config", str(config), f"model.backbone_weights={xe_release}",
                     "model.embedding_dim=16", "model.hidden_dim=32", "model.attention_dim=32",
                     "model.fusion_dim=32", "model.classifier_dim=32",
                     f"datasets.vqa2.data_dir={coco_root / 'vqa2'}", f"run.save_dir={save_dir}",
                     "trainer.device=cpu", "data.num_workers=0", "trainer.batch_size=16",
                     "trainer.max_updates=4", "trainer.eval_every=4", "trainer.log_every=1",
                     "trainer.precision=fp32", *extra]) == 0
        return load_file(str(save_dir / "release" / "model.safetensors"))

    pythia = train(tmp_path / "pythia")
    butd = load_file(str(xe_release / "model.safetensors"))
    trunk = [k for k in pythia if k.startswith("grid_encoder.trunk.")]
    assert len(trunk) == 5 * 6  # 5 conv-BN blocks: conv weight, BN weight/bias/mean/var/count
    for key in trunk:
        assert torch.equal(pythia[key], butd[key]), key
    assert len(_records(tmp_path / "pythia", "train")) == 4
    # The head trained: its weights moved from those of the same run at learning rate 0.
    still = train(tmp_path / "still", "optimizer.lr=0.0")
    for key in trunk:
        assert torch.equal(still[key], butd[key]), key
    head = [k for k in pythia if k.startswith("classifier.")]
    assert head and all(not torch.equal(pythia[k], still[k]) for k in head)
