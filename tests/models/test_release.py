"""The release format: save -> load rebuilds the model exactly; every malformed release is
refused with a message naming the file and the problem, and nothing is ever unpickled."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.base import BaseModel
from models.processors import AnswerSpace, ImageTransform, Vocabulary
from models.registry import MODELS
from models.release import (
    CONFIG_FILE,
    FORMAT_VERSION,
    METRICS_FILE,
    MODEL_FILE,
    PROCESSOR_DIR,
    ReleaseError,
    load,
    load_config,
    load_metrics,
    save_pretrained,
)

FAMILY = "tiny_release_test_model"
TIED_FAMILY = "tiny_release_test_tied"


@MODELS.register(FAMILY)
class TinyVQA(BaseModel):
    """Question embedding + image projection -> answer logits (B, num_answers)."""

    family = FAMILY
    tasks = ("vqa",)
    scale: torch.Tensor
    steps: torch.Tensor

    def __init__(self, *, vocab_size: int = 11, hidden_dim: int = 8, image_dim: int = 6,
                 num_answers: int = 5) -> None:
        super().__init__(dict(vocab_size=vocab_size, hidden_dim=hidden_dim,
                              image_dim=image_dim, num_answers=num_answers))
        self.embed = nn.Embedding(vocab_size, hidden_dim)
        self.image_proj = nn.Linear(image_dim, hidden_dim)
        self.classifier = nn.Linear(hidden_dim, num_answers)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, hidden_dim))
        self.register_buffer("steps", torch.tensor([3, 7], dtype=torch.long))

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]
                    ) -> TinyVQA:
        return cls(**model_cfg)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        q = self.embed(batch["question"]).mean(1)  # (B, H)
        v = self.image_proj(batch["image"])  # (B, H)
        return {"logits": self.classifier(q * self.scale + v)}  # (B, A)


@MODELS.register(TIED_FAMILY)
class TinyTied(BaseModel):
    """A language-model-like head tied to the input embedding."""

    family = TIED_FAMILY
    tasks = ("caption",)

    def __init__(self, *, vocab_size: int = 9, hidden_dim: int = 4) -> None:
        super().__init__(dict(vocab_size=vocab_size, hidden_dim=hidden_dim))
        self.embed = nn.Embedding(vocab_size, hidden_dim)
        self.head = nn.Linear(hidden_dim, vocab_size, bias=False)
        self.head.weight = self.embed.weight

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]
                    ) -> TinyTied:
        return cls(**model_cfg)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.embed(batch["tokens"]))}


class DDPLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class CompiledLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"question": torch.randint(0, 11, (3, 4), generator=g),
            "image": torch.randn(3, 6, generator=g)}


def _model() -> TinyVQA:
    torch.manual_seed(0)
    return TinyVQA().eval()


def _processors() -> dict[str, Any]:
    return {
        "question_vocab": Vocabulary.build(["what color is the cat", "how many dogs"]),
        "answer_space": AnswerSpace(["yes", "no", "2", "red"]),
        "image_transform": ImageTransform(size=32, interpolation="bicubic"),
    }


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return save_pretrained(_model(), tmp_path / "rel", processors=_processors(),
                           metrics={"vqa_accuracy": 0.5})


def _load_tiny(path: Path, **kwargs: Any) -> TinyVQA:
    model, _ = load(path, **kwargs)
    assert isinstance(model, TinyVQA)
    return model


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


# -- round trips -----------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    model = _model()
    out = save_pretrained(model, tmp_path / "rel")
    assert out == tmp_path / "rel"
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, MODEL_FILE]
    loaded, procs = load(out)
    assert type(loaded) is TinyVQA and not loaded.training and procs == {}
    _assert_same(model, loaded)
    with torch.no_grad():
        assert torch.equal(model(_batch())["logits"], loaded(_batch())["logits"])


def test_config_contents(release: Path) -> None:
    cfg = load_config(release)
    assert cfg["format"] == "pythia-release" and cfg["format_version"] == FORMAT_VERSION
    assert cfg["family"] == FAMILY and cfg["tasks"] == ["vqa"]
    assert cfg["hparams"] == TinyVQA().hparams
    assert cfg["processors"] == ["answer_space", "image_transform", "question_vocab"]
    assert cfg["dtype"] == "float32"
    assert cfg["parameters"] == TinyVQA().num_parameters()
    assert cfg["torch_version"] == torch.__version__ and cfg["created_by"].startswith("pythia")
    # the weights file is plain safetensors
    assert set(load_file(str(release / MODEL_FILE))) == set(TinyVQA().state_dict())


def test_processors_and_metrics_round_trip(release: Path) -> None:
    _, procs = load(release)
    ref = _processors()
    assert procs.keys() == ref.keys()
    assert procs["question_vocab"].words == ref["question_vocab"].words
    assert procs["answer_space"].answers == ref["answer_space"].answers
    assert procs["image_transform"] == ref["image_transform"]
    assert load_metrics(release) == {"vqa_accuracy": 0.5}


def test_nested_metrics_and_no_metrics(tmp_path: Path) -> None:
    metrics = {"vqa2": {"accuracy": 0.61, "per_type": {"yes/no": 0.8}}, "steps": 100}
    rel = save_pretrained(_model(), tmp_path / "a", metrics=metrics)
    assert load_metrics(rel) == metrics
    assert load_metrics(save_pretrained(_model(), tmp_path / "b")) is None
    with pytest.raises(ReleaseError, match="metrics must be JSON-serializable"):
        save_pretrained(_model(), tmp_path / "c", metrics={"bleu": float("nan")})
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("wrap", [DDPLike, CompiledLike,
                                  lambda m: CompiledLike(DDPLike(m)),
                                  lambda m: DDPLike(CompiledLike(m))])
def test_wrappers_are_unwrapped(tmp_path: Path, wrap: Any) -> None:
    model = _model()
    save_pretrained(wrap(model), tmp_path / "rel")
    loaded, _ = load(tmp_path / "rel")
    _assert_same(model, loaded)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in load_file(
        str(tmp_path / "rel" / MODEL_FILE)))


def test_bfloat16_save_and_load(tmp_path: Path) -> None:
    model = _model()
    rel = save_pretrained(model, tmp_path / "rel", dtype=torch.bfloat16)
    assert load_config(rel)["dtype"] == "bfloat16"
    stored = load_file(str(rel / MODEL_FILE))
    assert stored["classifier.weight"].dtype == torch.bfloat16
    assert stored["steps"].dtype == torch.long  # integer buffers are not cast

    loaded = _load_tiny(rel)
    assert loaded.classifier.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.steps, model.steps)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight.to(torch.bfloat16))

    as_f32 = _load_tiny(rel, dtype=torch.float32)
    assert as_f32.classifier.weight.dtype == torch.float32
    assert torch.equal(as_f32.classifier.weight,
                       model.classifier.weight.to(torch.bfloat16).float())
    with torch.no_grad():
        assert as_f32(_batch())["logits"].dtype == torch.float32


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyTied()
    rel = save_pretrained(model, tmp_path / "rel")
    assert set(load_file(str(rel / MODEL_FILE))) == {"embed.weight"}
    loaded, _ = load(rel)
    assert isinstance(loaded, TinyTied)
    assert loaded.head.weight is loaded.embed.weight
    _assert_same(model, loaded)


def test_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "rel"
    save_pretrained(_model(), target, metrics={"acc": 1.0})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(_model(), target)
    assert load_metrics(target) == {"acc": 1.0}

    torch.manual_seed(5)
    other = TinyVQA()
    save_pretrained(other, target, overwrite=True)
    assert load_metrics(target) is None  # the old release is replaced, not merged
    _assert_same(other, load(target)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]  # no leftovers

    empty = tmp_path / "empty"
    empty.mkdir()
    save_pretrained(_model(), empty)  # an empty directory is fine without overwrite
    assert (empty / MODEL_FILE).is_file()


class _Boom:
    def save(self, path: str | Path) -> None:
        Path(path).write_text("{partial")
        raise OSError("disk full")


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "rel"
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(_model(), target, processors={"vocab": _Boom()})
    assert list(tmp_path.iterdir()) == []

    save_pretrained(_model(), target, metrics={"acc": 1.0})
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(_model(), target, processors={"vocab": _Boom()}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]
    assert load_metrics(target) == {"acc": 1.0}  # the old release is intact
    load(target)


def test_save_refuses_unregistered_and_non_models(tmp_path: Path) -> None:
    class Unregistered(TinyVQA):
        family = "tiny_release_never_registered"

    with pytest.raises(ReleaseError, match="not registered"):
        save_pretrained(Unregistered(), tmp_path / "a")

    class Subclass(TinyVQA):  # same family name, but not the registered class
        pass

    with pytest.raises(ReleaseError, match="must rebuild the class"):
        save_pretrained(Subclass(), tmp_path / "b")
    with pytest.raises(ReleaseError, match=r"expected a models\.base\.BaseModel"):
        save_pretrained(nn.Linear(2, 2), tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_on_cuda(release: Path) -> None:
    model = _load_tiny(release, device="cuda")
    assert model.classifier.weight.is_cuda
    batch = {k: v.cuda() for k, v in _batch().items()}
    with torch.no_grad():
        out = model(batch)["logits"].cpu()
        ref = _model()(_batch())["logits"]
    assert torch.allclose(out, ref, atol=1e-5)


# -- malformed releases ----------------------------------------------------------------------
def _edit_config(rel: Path, **changes: Any) -> None:
    cfg = json.loads((rel / CONFIG_FILE).read_text())
    cfg.update(changes)
    (rel / CONFIG_FILE).write_text(json.dumps(cfg))


def _edit_weights(rel: Path, fn: Any) -> None:
    tensors = load_file(str(rel / MODEL_FILE))
    fn(tensors)
    save_file(tensors, str(rel / MODEL_FILE))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match=r"nope: release directory not found"):
        load(tmp_path / "nope")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"config.json: config file missing"),
        ("{not json", r"config.json: not valid JSON"),
        ("[1, 2]", r"config.json: must be a JSON object"),
    ],
)
def test_bad_config_file(release: Path, content: str | None, message: str) -> None:
    if content is None:
        (release / CONFIG_FILE).unlink()
    else:
        (release / CONFIG_FILE).write_text(content)
    with pytest.raises(ReleaseError, match=message):
        load(release)
    with pytest.raises(ReleaseError, match=message):
        load_config(release)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "hf-transformers"}, r"'format' is 'hf-transformers', expected "
                                        r"'pythia-release'"),
        ({"format_version": 99}, r"format_version 99 is not supported \(newer than this code; "
                                 r"upgrade pythia-mm\); supported versions: 1"),
        ({"format_version": 0}, r"format_version 0 is not supported; supported versions: 1"),
        ({"format_version": "1"}, r"'format_version' must be an integer"),
        ({"family": "tiny_release_test_modle"}, r"family 'tiny_release_test_modle' is not "
                                                r"registered \(known: .*tiny_release_test_model"
                                                r".*plugin family must be imported"),
        ({"hparams": {"vocab_size": 11, "bogus": 1}}, r"hparams rejected by family "
                                                      r"'tiny_release_test_model': .*bogus"),
        ({"hparams": [1]}, r"field 'hparams' must be an object"),
        ({"dtype": "int8"}, r"field 'dtype' is 'int8'"),
        ({"processors": ["answer_space"]}, r"unexpected processor file\(s\) image_transform, "
                                           r"question_vocab"),
        ({"processors": ["answer_space", "image_transform", "question_vocab", "ocr"]},
         r"processor file\(s\) missing for ocr"),
    ],
)
def test_bad_config_fields(release: Path, changes: dict[str, Any], message: str) -> None:
    _edit_config(release, **changes)
    with pytest.raises(ReleaseError, match=message) as info:
        load(release)
    assert str(release) in str(info.value)


def test_missing_weights(release: Path) -> None:
    (release / MODEL_FILE).unlink()
    with pytest.raises(ReleaseError, match=r"model.safetensors: weights file missing"):
        load(release)


def _touch(path: str) -> None:
    Path(path).write_text("unpickled!")


class _Payload:
    """Unpickling this object creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_weights_are_refused_without_unpickling(release: Path, tmp_path: Path,
                                                       writer: str) -> None:
    marker = tmp_path / "marker"
    payload = {"classifier.weight": torch.zeros(2), "evil": _Payload(marker)}
    checkpoint = tmp_path / "checkpoint.pt"
    if writer == "torch.save":
        torch.save(payload, checkpoint)
        torch.load(checkpoint, weights_only=False)
    else:
        checkpoint.write_bytes(pickle.dumps(payload))
        pickle.loads(checkpoint.read_bytes())
    assert marker.exists()  # the trap works: really unpickling the file creates the marker
    marker.unlink()
    checkpoint.rename(release / MODEL_FILE)

    with pytest.raises(ReleaseError, match=r"model.safetensors: not a safetensors file"):
        load(release)
    assert not marker.exists()


def test_truncated_and_garbage_weights(release: Path) -> None:
    weights = release / MODEL_FILE
    good = weights.read_bytes()
    weights.write_bytes(good[:-3])
    with pytest.raises(ReleaseError, match=r"not a safetensors file \(entry .* outside"):
        load(release)
    weights.write_bytes(b"abc")
    with pytest.raises(ReleaseError, match=r"not a safetensors file \(3 bytes"):
        load(release)


def test_missing_tensor(release: Path) -> None:
    _edit_weights(release, lambda t: t.pop("classifier.bias"))
    with pytest.raises(ReleaseError, match=r"1 missing tensor\(s\): classifier.bias"):
        load(release)


def test_unexpected_tensor(release: Path) -> None:
    _edit_weights(release, lambda t: t.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(ReleaseError, match=r"1 unexpected tensor\(s\): extra.weight"):
        load(release)


def test_wrong_shape(release: Path) -> None:
    _edit_config(release, hparams={**TinyVQA().hparams, "num_answers": 7})
    with pytest.raises(ReleaseError, match=r"wrong shape for 2 tensor\(s\): classifier.weight "
                                           r"\(expected \[7, 8\], found \[5, 8\]\)"):
        load(release)


def test_wrong_dtype_kind(release: Path) -> None:
    _edit_weights(release, lambda t: t.update({"steps": t["steps"].float()}))
    with pytest.raises(ReleaseError, match=r"wrong dtype kind for 1 tensor\(s\): steps "
                                           r"\(expected integer like torch.int64, found F32\)"):
        load(release)
    model = _load_tiny(release, strict=False)
    assert model.steps.dtype == torch.long and model.steps.tolist() == [3, 7]


def test_symlink_escaping_the_release_is_refused(release: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text((release / PROCESSOR_DIR / "answer_space.json").read_text())
    (release / PROCESSOR_DIR / "answer_space.json").unlink()
    os.symlink(outside, release / PROCESSOR_DIR / "answer_space.json")
    with pytest.raises(ReleaseError, match=r"answer_space.json: resolves to .*outside the "
                                           r"release directory"):
        load(release)


def test_symlinked_config_outside_is_refused(release: Path, tmp_path: Path) -> None:
    outside = tmp_path / "config.json"
    (release / CONFIG_FILE).rename(outside)
    os.symlink(outside, release / CONFIG_FILE)
    with pytest.raises(ReleaseError, match=r"outside the release directory"):
        load_config(release)


def test_symlink_inside_the_release_is_fine(release: Path, tmp_path: Path) -> None:
    (release / METRICS_FILE).rename(release / "eval.json")
    os.symlink("eval.json", release / METRICS_FILE)
    assert load_metrics(release) == {"vqa_accuracy": 0.5}
    link = tmp_path / "link"
    os.symlink(release, link)  # the release directory itself may be a link
    load(link)


def test_corrupt_processor_file(release: Path) -> None:
    (release / PROCESSOR_DIR / "question_vocab.json").write_text("{oops")
    with pytest.raises(ReleaseError, match=r"processor: .*question_vocab.json: not valid JSON"):
        load(release)
    (release / PROCESSOR_DIR / "question_vocab.json").write_text('{"type": "nonsense"}')
    with pytest.raises(ReleaseError, match=r"question_vocab.json: field 'type' must name"):
        load(release)


def test_missing_processor_directory(release: Path) -> None:
    for f in (release / PROCESSOR_DIR).iterdir():
        f.unlink()
    (release / PROCESSOR_DIR).rmdir()
    with pytest.raises(ReleaseError, match=r"processor: processor directory missing"):
        load(release)


def test_oversized_json_is_refused(release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.release as rel_mod

    monkeypatch.setattr(rel_mod, "MAX_JSON_BYTES", 64)
    with pytest.raises(ReleaseError, match=r"config.json: config file is \d+ bytes, over the "
                                           r"limit of 64"):
        load(release)


def test_processor_for_another_answer_space_is_refused(tmp_path: Path) -> None:
    import json

    from models import create_model
    from models.processors import AnswerSpace, Vocabulary

    vocab = Vocabulary(["what", "color"])
    space = AnswerSpace(["red", "blue", "green"])
    model = create_model("pythia", vocab_size=len(vocab), num_answers=len(space),
                         embedding_dim=8, hidden_dim=8, image_dim=8, attention_dim=8,
                         fusion_dim=8, classifier_dim=8, classifier_text_dim=8)
    release = save_pretrained(model, tmp_path / "r", processors={"vocab": vocab,
                                                                 "answer_space": space})
    load(release)  # fits
    path = release / "processor" / "answer_space.json"
    data = json.loads(path.read_text())
    data["answers"] = data["answers"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ReleaseError, match=r"answer_space\.json: .*num_answers="):
        load(release)
