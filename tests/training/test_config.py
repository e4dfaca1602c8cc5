import textwrap

import pytest
from omegaconf import OmegaConf

from models.registry import MODELS
from training.config import PUBLIC_KEYS, ConfigError, load_config, main, save_resolved


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_alone_resolve_and_public_keys_exist():
    cfg = load_config()
    assert cfg.trainer.max_updates == 1000
    for key in PUBLIC_KEYS:
        if "<name>" not in key:
            assert OmegaConf.select(cfg, key) is not None, key


def test_layer_order_defaults_dataset_experiment_cli(tmp_path):
    exp = _write(tmp_path / "exp.yaml", """
        datasets:
          vqa2:
            data_dir: /from/experiment
            max_question_length: 20
        trainer:
          batch_size: 64
    """)
    cfg = load_config(exp, ["datasets.vqa2.max_question_length=30", "trainer.seed=7"])
    vqa = cfg.datasets.vqa2
    assert vqa.answer_space.max_answers == 3129          # layer 3: dataset defaults
    assert vqa.data_dir == "/from/experiment"            # layer 4 over layer 3
    assert vqa.max_question_length == 30                 # layer 5 over layer 4
    assert cfg.trainer.batch_size == 64 and cfg.trainer.seed == 7
    assert cfg.trainer.max_updates == 1000               # layer 1 untouched
    assert "coco" not in cfg.datasets                    # only the datasets named


def test_unknown_key_names_the_key_its_origin_and_closest_keys(tmp_path):
    exp = _write(tmp_path / "exp.yaml", "trainer:\n  max_update: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(exp)
    msg = str(info.value)
    assert str(exp) in msg and "'trainer.max_update'" in msg
    assert "trainer.max_updates" in msg
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'run.save_dri'.*"
                                          r"run.save_dir"):
        load_config(None, ["run.save_dri=/tmp/x"])
    with pytest.raises(ConfigError, match=r"datasets.vqa2.data_dri.*datasets.vqa2.data_dir"):
        load_config(None, ["datasets.vqa2.data_dri=x"])


def test_unknown_dataset_and_bad_overrides_are_clear():
    with pytest.raises(ConfigError, match=r"unknown dataset 'vqa3'; did you mean 'vqa2'"):
        load_config(None, ["datasets.vqa3.data_dir=x"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(None, ["trainer.seed"])
    with pytest.raises(ConfigError, match=r"command line: trainer.seed expects int.*notanint"):
        load_config(None, ["trainer.seed=notanint"])
    with pytest.raises(ConfigError, match=r"run.resume expects bool"):
        load_config(None, ["run.resume=3"])
    assert load_config(None, ["data.temperature=3"]).data.temperature == 3  # int for float


def test_missing_or_malformed_experiment_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = _write(tmp_path / "bad.yaml", "trainer: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not a valid YAML config"):
        load_config(bad)


def test_every_dataset_has_a_sampling_weight():
    cfg = load_config(overrides=["datasets.vqa2.data_dir=/a", "datasets.coco.data_dir=/b",
                                 "datasets.vqa2.sampling_weight=1.5"])
    assert cfg.datasets.vqa2.sampling_weight == 1.5
    assert cfg.datasets.coco.sampling_weight == 1.0
    assert cfg.datasets.coco.data_dir == "/b"  # the reader's own keys are all still there
    with pytest.raises(ConfigError, match=r"datasets.coco.sampling_weigth"):
        load_config(overrides=["datasets.coco.sampling_weigth=2"])


def test_imports_register_user_components_with_their_own_defaults(tmp_path, monkeypatch):
    pkg = tmp_path / "my_plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _write(pkg / "toy.py", """
        from models.registry import MODELS, LOSSES

        @MODELS.register("toy_model_for_config_test")
        class Toy:
            config_defaults = {"hidden": 8, "dropout": 0.1}

        @LOSSES.register("toy_loss_for_config_test")
        def toy_loss(x):
            return x
    """)
    monkeypatch.chdir(tmp_path)
    exp = _write(tmp_path / "exp.yaml", """
        imports: [my_plugins.toy]
        model:
          name: toy_model_for_config_test
          hidden: 16
    """)
    cfg = load_config(exp)
    assert "toy_model_for_config_test" in MODELS
    assert cfg.model.hidden == 16 and cfg.model.dropout == 0.1
    with pytest.raises(ConfigError, match=r"model.hiden.*model.hidden"):
        load_config(exp, ["model.hiden=3"])


def test_imports_from_a_file_path_and_failures(tmp_path):
    plugin = _write(tmp_path / "plugin_file.py", """
        from training.registry import METRICS
        METRICS.register("metric_from_file_for_config_test", len)
    """)
    load_config(None, [f"imports=[{plugin}]"])
    from training.registry import METRICS
    assert "metric_from_file_for_config_test" in METRICS
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        load_config(None, ["imports=[no_such_module_xyz]"])


def test_save_resolved_writes_the_full_config(tmp_path):
    cfg = load_config(None, ["run.save_dir=" + str(tmp_path / "run"), "trainer.seed=3"])
    path = save_resolved(cfg, cfg.run.save_dir)
    assert path == tmp_path / "run" / "config.yaml"
    back = OmegaConf.load(path)
    assert back.trainer.seed == 3 and back == cfg


def test_cli_prints_config_and_reports_errors(capsys):
    assert main(["trainer.seed=11"]) == 0
    assert "seed: 11" in capsys.readouterr().out
    assert main(["trainer.sed=1"]) == 2
    assert "unknown config key 'trainer.sed'" in capsys.readouterr().err
