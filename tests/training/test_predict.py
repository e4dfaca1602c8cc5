"""``training.predict`` on a tiny generated ShapesWorld with untrained releases: every dataset's
result file is valid EvalAI output covering each key exactly once, a real 2-process torchrun
gives the same rows as one process, and bad requests exit 1 with a message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import create_model, save_pretrained
from models.processors import ImageTransform
from training.config import load_config
from training.data import build_processors, coco, textvqa, visdial, vizwiz
from training.data.shapes import generate
from training.evaluate import main as evaluate_main
from training.evaluation import evalai
from training.predict import main, predict

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")
BACKBONE = dict(backbone="resnet18", freeze_backbone=True, dropout=0.0)
VQA = dict(embedding_dim=16, hidden_dim=32, num_glimpses=1, image_dim=32, attention_dim=32,
           fusion_dim=32, classifier_dim=32, classifier_text_dim=16, **BACKBONE)
SMALL = dict(embedding_dim=16, hidden_dim=32, image_dim=32, attention_dim=32, **BACKBONE)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate(root, seed=0, train_images=6, val_images=6, test_images=4, image_size=64,
             workers=1)
    return root


@pytest.fixture(scope="module")
def releases(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("releases")
    cfg = load_config(None, [*(f"datasets.{n}.data_dir={world / n}" for n in NAMES),
                             "model.image_size=64"])
    torch.manual_seed(0)
    made = {}

    def release(name, family, dataset, **kwargs):
        procs = {**build_processors(cfg, dataset), "image_transform": ImageTransform(size=64)}
        sizes = {}
        if "vocab" in procs:
            sizes["vocab_size"] = len(procs["vocab"])
        if "answer_space" in procs:
            sizes["num_answers"] = len(procs["answer_space"])
        if "caption_vocab" in procs:
            sizes["vocab_size"] = len(procs["caption_vocab"])
        model = create_model(family, **sizes, **kwargs)
        made[name] = save_pretrained(model, out / name, processors=procs)

    release("vqa2", "pythia", "vqa2", **VQA)
    release("textvqa", "lorra", "textvqa", ocr_embedding_dim=16, ocr_dim=32, **VQA)
    release("vizwiz", "pythia", "vizwiz", **VQA)
    release("coco", "butd", "coco", **SMALL)
    release("visdial", "visdial", "visdial", decoder="disc", **SMALL)
    return made


def _expected(world, dataset, split, ds_split):
    d = world / dataset
    if dataset == "vqa2":
        recs = json.loads((d / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())
        return {q["question_id"] for q in recs["questions"]}
    if dataset == "textvqa":
        if ds_split == "test":
            recs = json.loads((d / "TextVQA_0.5.1_test.json").read_text())["data"]
        else:
            recs = textvqa.load_ground_truth(d, ds_split)
        return {r["question_id"] for r in recs}
    if dataset == "vizwiz":
        return {r["image"] for r in vizwiz.load_ground_truth(d, ds_split)}
    if dataset == "coco":
        return set(coco.load_ground_truth(d, split))
    if ds_split == "test":
        dialogs = json.loads((d / "visdial_1.0_test.json").read_text())["data"]["dialogs"]
    else:
        dialogs = visdial.load_ground_truth(d, ds_split)["dialogs"]
    return set(evalai.visdial_expected_rounds(dialogs, ds_split))


def _validate(dataset, rows, expected):
    if dataset in ("vqa2", "textvqa"):
        evalai.validate_vqa(rows, expected)
        return [r["question_id"] for r in rows]
    if dataset == "vizwiz":
        evalai.validate_vizwiz(rows, expected)
        return [r["image"] for r in rows]
    if dataset == "coco":
        evalai.validate_coco(rows, expected)
        return [r["image_id"] for r in rows]
    evalai.validate_visdial(rows, expected)
    return [(r["image_id"], r["round_id"]) for r in rows]


CASES = [
    ("vqa2", "val2014", "val"),
    ("vqa2", "test2015", "test"),
    ("vqa2", "test-dev", "test-dev"),
    ("textvqa", "val", "val"),
    ("vizwiz", "val", "val"),
    ("coco", "val2014", "val"),
    ("visdial", "val", "val"),
    ("visdial", "test", "test"),
]


@pytest.mark.parametrize(("dataset", "split", "generic"), CASES)
def test_every_dataset_gives_a_valid_file_covering_each_key_once(
        world, releases, tmp_path, dataset, split, generic):
    out = tmp_path / "pred" / f"{dataset}.json"
    official = {"test-dev": "test-dev2015"}.get(split, split)
    result = predict(releases[dataset], dataset, world / dataset, split, out, batch_size=4,
                     device="cpu")
    rows = evalai.read_results(out)
    expected = _expected(world, dataset, official, generic)
    keys = _validate(dataset, rows, expected)
    assert result["rows"] == len(rows) == len(expected) == len(set(keys))
    assert set(keys) == expected
    assert result["out"] == str(out) and result["seconds"] >= 0
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no shard, no temp
    if dataset == "visdial" and generic == "test":
        assert all(len(r["ranks"]) == 100 for r in rows)
    if dataset == "vqa2" and generic == "val":
        assert evaluate_main(["--dataset", "vqa2", "--data-dir", str(world / "vqa2"),
                              "--split", "val2014", "--predictions", str(out)]) == 0


def test_cli_prints_one_json_line(world, releases, tmp_path, capsys):
    out = tmp_path / "vizwiz.json"
    code = main(["--model", str(releases["vizwiz"]), "--dataset", "vizwiz", "--data-dir",
                 str(world / "vizwiz"), "--split", "val", "--out", str(out), "--device", "cpu",
                 "--batch-size", "3", "--no-progress"])
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["out"] == str(out) and line["rows"] == len(evalai.read_results(out))


def test_torchrun_two_processes_match_one_process(world, releases, tmp_path):
    args = ["--model", str(releases["vqa2"]), "--dataset", "vqa2", "--data-dir",
            str(world / "vqa2"), "--split", "val2014", "--device", "cpu", "--batch-size", "4",
            "--no-progress"]
    one = tmp_path / "one.json"
    assert main([*args, "--out", str(one)]) == 0
    two = tmp_path / "two" / "vqa2.json"
    two.parent.mkdir()
    (two.parent / "vqa2.json.rank5.jsonl").write_text("{}\n")  # left by an older, wider run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "training.predict", *args, "--out", str(two)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rows_two = evalai.read_results(two)
    rows_one = evalai.read_results(one)
    assert summary["rows"] == len(rows_two) == len(rows_one)
    as_set = {json.dumps(r, sort_keys=True) for r in rows_two}
    assert len(as_set) == len(rows_two)  # no duplicates
    assert as_set == {json.dumps(r, sort_keys=True) for r in rows_one}
    assert sorted(p.name for p in two.parent.iterdir()) == ["vqa2.json"]  # shards gone


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_errors_exit_1_with_a_message(world, releases, tmp_path, capsys):
    base = ["--data-dir", world / "vqa2", "--out", tmp_path / "x.json", "--device", "cpu"]
    code, err = _cli(capsys, "--model", releases["coco"], "--dataset", "vqa2", "--split",
                     "val", *base)
    assert code == 1 and "error:" in err and "'vqa'" in err and "caption" in err
    code, err = _cli(capsys, "--model", releases["vqa2"], "--dataset", "vqa2", "--split",
                     "val2017", *base)
    assert code == 1 and "no split 'val2017'" in err
    code, err = _cli(capsys, "--model", tmp_path / "missing", "--dataset", "vqa2", "--split",
                     "val", *base)
    assert code == 1 and "release directory not found" in err
    code, err = _cli(capsys, "--model", releases["vqa2"], "--dataset", "gqa", "--split",
                     "val", *base)
    assert code == 1 and "unknown dataset 'gqa'" in err
    code, err = _cli(capsys, "--model", releases["coco"], "--dataset", "coco", "--split",
                     "test", "--data-dir", world / "coco", "--out", tmp_path / "x.json")
    assert code == 1 and "coco has no split 'test'" in err
    if not torch.cuda.is_available():
        code, err = _cli(capsys, "--model", releases["vqa2"], "--dataset", "vqa2", "--split",
                         "val", "--device", "cuda", "--data-dir", world / "vqa2", "--out",
                         tmp_path / "x.json")
        assert code == 1 and "CUDA is not available" in err
    assert not (tmp_path / "x.json").exists()
