import pytest

from models.registry import MODELS, Registry
from training.registry import DATASETS, METRICS, OPTIMIZERS, SCHEDULERS


def test_register_get_and_names():
    r: Registry = Registry("widgets")

    @r.register("alpha")
    class Alpha:
        pass

    r.register("beta", len)
    assert r.get("alpha") is Alpha
    assert r.get("beta") is len
    assert r.names() == ["alpha", "beta"]
    assert "alpha" in r and "gamma" not in r
    assert len(r) == 2


def test_duplicate_name_is_an_error_naming_both():
    r: Registry = Registry("widgets")
    r.register("alpha", len)
    with pytest.raises(ValueError, match=r"widgets: the name 'alpha' is already registered"):
        r.register("alpha", max)


def test_miss_raises_keyerror_with_close_and_known_names():
    r: Registry = Registry("losses")
    for name in ("logit_bce", "cross_entropy", "nll"):
        r.register(name, len)
    with pytest.raises(KeyError) as info:
        r.get("logit_bec")
    msg = str(info.value)
    assert "losses: no 'logit_bec'" in msg
    assert "did you mean 'logit_bce'" in msg
    assert "cross_entropy, logit_bce, nll" in msg


def test_name_defaults_to_dunder_name_and_must_be_string():
    r: Registry = Registry("x")

    @r.register()
    def my_fn():
        return 1

    assert r.get("my_fn") is my_fn
    with pytest.raises(ValueError, match="non-empty string"):
        r.register("", len)


def test_one_registry_per_kind_and_builtin_components_registered():
    from training.config import import_builtin_modules

    import_builtin_modules()

    kinds = {MODELS.kind, DATASETS.kind, METRICS.kind, OPTIMIZERS.kind, SCHEDULERS.kind}
    assert len(kinds) == 5
    assert {"vqa2", "textvqa", "vizwiz", "coco", "visdial"} <= set(DATASETS.names())
    assert {"vqa_accuracy", "caption_metrics", "visdial_ranking", "visdial_ndcg",
            "vizwiz_answerability"} <= set(METRICS.names())
    assert {"adamax", "adamw", "sgd"} <= set(OPTIMIZERS.names())
    assert {"pythia", "warmup_cosine", "warmup_linear", "constant"} <= set(SCHEDULERS.names())
