"""Feature store: the binary record format, writer/reader round trips (zero-copy read-only
views, fork, pickle), the errors that name the key and the store, and the
``python -m training.features`` commands (import-npy, import-tsv, extract, info)."""

import base64
import csv
import gc
import json
import multiprocessing as mp
import pickle
import struct

import lmdb
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from models.processors.image import ImageTransform, load_image
from training.data.feature_store import (
    ALIGNMENT,
    MAGIC,
    DuplicateKeyError,
    FeatureStore,
    FeatureStoreWriter,
    decode_record,
    encode_record,
    key_for_image,
)
from training.features import PICKLE_HELP, build_parser, main

RNG = np.random.default_rng(0)


def _region(n: int, d: int, dtype=np.float32) -> dict[str, np.ndarray]:
    return {
        "features": RNG.standard_normal((n, d)).astype(dtype),
        "boxes": (RNG.random((n, 4)) * 100).astype(np.float32),
    }


def _write(path, records, **kwargs):
    with FeatureStoreWriter(path, **kwargs) as w:
        for key, arrays, attrs in records:
            w.put(key, arrays, attrs)


# --------------------------------------------------------------------------------------------
# record format


def test_record_binary_layout_is_the_documented_contract():
    feats = np.arange(12, dtype=np.float16).reshape(3, 4)
    boxes = np.arange(12, dtype=np.float32).reshape(3, 4)
    value = encode_record({"features": feats, "boxes": boxes}, {"kind": "region", "image_w": 7})
    assert value[:4] == MAGIC == b"PYFS"
    (hlen,) = struct.unpack("<I", value[4:8])
    header = json.loads(value[8:8 + hlen].decode("utf-8"))
    assert header["attrs"] == {"kind": "region", "image_w": 7}
    spec_f, spec_b = header["arrays"]["features"], header["arrays"]["boxes"]
    assert spec_f["dtype"] == "<f2" and spec_f["shape"] == [3, 4]
    assert spec_b["dtype"] == "<f4" and spec_b["shape"] == [3, 4]
    for spec, arr in ((spec_f, feats), (spec_b, boxes)):
        assert spec["offset"] % ALIGNMENT == 0 and spec["offset"] >= 8 + hlen
        assert value[spec["offset"]:spec["offset"] + arr.nbytes] == arr.tobytes()
    assert set(value[8 + hlen:spec_f["offset"]]) <= {0}  # zero padding after the header
    arrays, attrs = decode_record(value)
    np.testing.assert_array_equal(arrays["features"], feats)
    np.testing.assert_array_equal(arrays["boxes"], boxes)
    assert attrs["image_w"] == 7


def test_big_endian_and_non_contiguous_inputs_are_stored_little_endian_c_order():
    src = np.arange(20, dtype=">f4").reshape(4, 5).T  # big-endian, Fortran-ordered view
    arrays, _ = decode_record(encode_record({"features": src}))
    assert arrays["features"].dtype.str == "<f4"
    np.testing.assert_array_equal(arrays["features"], src)


# --------------------------------------------------------------------------------------------
# writer / reader


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip_values_dtypes_shapes_attrs_and_zero_copy_views(tmp_path, dtype):
    recs = [
        ("COCO_train2014_000000000009", _region(5, 8, dtype),
         {"kind": "region", "image_w": 640, "image_h": 480}),
        ("img_b", {"features": RNG.standard_normal((4, 8)).astype(dtype),
                   "objects": np.array([3, 1, 4, 1])},
         {"kind": "grid", "grid": [2, 2], "image_w": 10, "image_h": 20}),
        ("img_c", _region(1, 8, dtype), None),
    ]
    _write(tmp_path / "s", recs, created_by="pytest")
    store = FeatureStore(tmp_path / "s")
    assert len(store) == 3
    assert list(store.keys()) == sorted(k for k, _, _ in recs)
    assert "img_b" in store and "nope" not in store and "__meta__" not in store
    for key, arrays, attrs in recs:
        got = store.get(key)
        assert set(got) == set(arrays)
        for name, arr in arrays.items():
            expected_dtype = np.float32 if name == "boxes" else arr.dtype
            assert got[name].dtype == expected_dtype and got[name].shape == arr.shape
            np.testing.assert_array_equal(got[name], arr)
            # zero copy, read-only views on the memory map
            assert got[name].base is not None and not got[name].flags.owndata
            assert not got[name].flags.writeable
            with pytest.raises(ValueError):
                got[name][0] = 0
        assert store.attrs(key) == (attrs or {})
    assert store["img_b"]["objects"].dtype == np.int64
    copied = store.get("img_c", copy=True)["features"]
    assert copied.flags.owndata and copied.flags.writeable
    meta = store.meta
    assert meta["format"] == "pythia-feature-store" and meta["version"] == 1
    assert meta["count"] == 3 and meta["feature_dim"] == 8
    assert meta["dtype"] == np.dtype(dtype).name
    assert meta["created_by"] == "pytest" and meta["complete"] is True
    assert meta["kind"] == "mixed"


def test_views_stay_valid_after_close_and_after_the_store_is_gone(tmp_path):
    _write(tmp_path / "s", [("a", {"features": np.full((64, 32), 3, np.float32)}, None)])
    feats = FeatureStore(tmp_path / "s").get("a")["features"]  # the store object is dropped
    gc.collect()
    assert float(feats.sum()) == 3.0 * 64 * 32
    store = FeatureStore(tmp_path / "s")
    more = store.get("a")["features"]
    store.close()
    gc.collect()
    assert float(more.sum()) == 3.0 * 64 * 32
    np.testing.assert_array_equal(store.get("a")["features"], more)  # reopens lazily


def test_two_instances_on_one_store_share_it(tmp_path):
    _write(tmp_path / "s", [("a", {"features": np.ones((2, 4), np.float32)}, None)])
    s1, s2 = FeatureStore(tmp_path / "s"), FeatureStore(tmp_path / "s")
    np.testing.assert_array_equal(s1.get("a")["features"], s2.get("a")["features"])


def _child_read(store, conn):
    try:
        feats = store.get("k2")["features"]
        from training.data import feature_store as fs

        handle = fs._HANDLES[store._key]
        conn.send((float(feats.sum()), handle.pid, len(store), store.attrs("k2")))
    except BaseException as exc:  # report instead of dying silently
        conn.send(repr(exc))
    conn.close()


def test_reopens_in_a_forked_child(tmp_path):
    _write(tmp_path / "s", [(f"k{i}", {"features": np.full((3, 4), i, np.float32)},
                             {"i": i}) for i in range(4)])
    store = FeatureStore(tmp_path / "s")
    parent_view = store.get("k1")["features"]  # the parent's environment is open and in use
    from training.data import feature_store as fs

    parent_pid = fs._HANDLES[store._key].pid
    del parent_view
    gc.collect()
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_read, args=(store, send))
    proc.start()
    result = recv.recv()
    proc.join(timeout=30)
    assert proc.exitcode == 0, result
    total, child_handle_pid, n, attrs = result
    assert total == 2 * 12 and n == 4 and attrs == {"i": 2}
    assert child_handle_pid == proc.pid != parent_pid  # the child opened its own environment
    assert float(store.get("k3")["features"].sum()) == 36  # the parent still reads


class _StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store
        self.keys = sorted(store.keys())

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        feats = self.store.get(self.keys[i])["features"]
        return torch.tensor(feats), self.store.attrs(self.keys[i])["i"]


def test_dataloader_workers_read_a_store_opened_in_the_parent(tmp_path):
    _write(tmp_path / "s", [(f"k{i:02d}", {"features": np.full((3, 4), i, np.float32)},
                             {"i": i}) for i in range(12)])
    store = FeatureStore(tmp_path / "s")
    assert store.attrs("k00") == {"i": 0}  # opened here, before the workers fork
    loader = torch.utils.data.DataLoader(_StoreDataset(store), batch_size=4, num_workers=2,
                                         multiprocessing_context="fork")
    seen = {}
    for feats, idx in loader:
        for f, i in zip(feats, idx.tolist()):
            seen[i] = float(f.sum())
    assert seen == {i: 12.0 * i for i in range(12)}


def test_pickles_without_its_handle(tmp_path):
    _write(tmp_path / "s", [("a", {"features": np.ones((2, 4), np.float16)}, {"x": 1})])
    store = FeatureStore(tmp_path / "s")
    clone = pickle.loads(pickle.dumps(store))
    assert clone._key is None
    assert clone.attrs("a") == {"x": 1} and clone.get("a")["features"].dtype == np.float16


def test_missing_key_names_the_key_and_the_store(tmp_path):
    _write(tmp_path / "s", [("a", {"features": np.ones((2, 4), np.float32)}, None)])
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(KeyError) as err:
        store.get("COCO_missing")
    assert "COCO_missing" in str(err.value) and str(tmp_path / "s") in str(err.value)
    with pytest.raises(KeyError):
        store.attrs("__meta__")


def test_corrupt_records_raise_value_error_naming_key_and_store(tmp_path):
    path = tmp_path / "s"
    good = {"features": np.ones((8, 16), np.float32)}
    _write(path, [("good", good, None)])
    valid = encode_record(good, {"kind": "region"})
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"bad_magic", b"NOPE" + valid[4:])
        txn.put(b"truncated", valid[:-10])
        txn.put(b"short", b"PY")
        txn.put(b"bad_header", MAGIC + struct.pack("<I", 5) + b"{oops")
    env.close()
    store = FeatureStore(path)
    for key, reason in (("bad_magic", "magic"), ("truncated", "truncated"),
                        ("short", "truncated"), ("bad_header", "header")):
        with pytest.raises(ValueError) as err:
            store.get(key)
        msg = str(err.value)
        assert key in msg and str(path) in msg and reason in msg, msg
    np.testing.assert_array_equal(store.get("good")["features"], good["features"])


def test_paths_that_are_not_stores(tmp_path):
    with pytest.raises(FileNotFoundError, match="feature store not found"):
        FeatureStore(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no data\.mdb"):
        FeatureStore(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a feature store"):
        FeatureStore(tmp_path / "file.bin")
    env = lmdb.open(str(tmp_path / "plain"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"b")
    env.close()
    with pytest.raises(ValueError, match="not a feature store"):
        FeatureStore(tmp_path / "plain")


def test_duplicate_key_errors_unless_overwrite(tmp_path):
    path = tmp_path / "s"
    with FeatureStoreWriter(path) as w:
        w.put("a", {"features": np.zeros((2, 4), np.float32)})
        with pytest.raises(DuplicateKeyError, match="'a' already exists"):
            w.put("a", {"features": np.ones((2, 4), np.float32)})
    with FeatureStoreWriter(path) as w:  # appending: committed keys are duplicates too
        with pytest.raises(DuplicateKeyError):
            w.put("a", {"features": np.ones((2, 4), np.float32)})
        w.put("b", {"features": np.ones((2, 4), np.float32)})
    with FeatureStoreWriter(path, overwrite=True) as w:
        w.put("a", {"features": np.full((3, 4), 7, np.float32)})
    store = FeatureStore(path)
    assert len(store) == 2 and store.meta["count"] == 2
    np.testing.assert_array_equal(store.get("a")["features"], np.full((3, 4), 7, np.float32))


def test_writer_grows_the_map_and_batches_commits(tmp_path):
    path = tmp_path / "s"
    arrays = {f"k{i:03d}": np.full((64, 512), i, np.float32) for i in range(40)}  # 128 KiB each
    with FeatureStoreWriter(path, map_size=1 << 20, commit_every=7) as w:
        for key, feats in arrays.items():
            w.put(key, {"features": feats})
        assert w.count == 40
    store = FeatureStore(path)
    assert len(store) == 40 and store.meta["count"] == 40
    for key, feats in arrays.items():
        np.testing.assert_array_equal(store.get(key)["features"], feats)


def test_writer_validates_records(tmp_path):
    with FeatureStoreWriter(tmp_path / "s") as w:
        w.put("ok", {"features": np.zeros((2, 4), np.float32)})
        cases = [
            ("nofeat", {"boxes": np.zeros((2, 4))}, None, "features"),
            ("flat", {"features": np.zeros(4, np.float32)}, None, "2-D"),
            ("f64", {"features": np.zeros((2, 4))}, None, "float16 or float32"),
            ("dim", {"features": np.zeros((2, 5), np.float32)}, None, "feature dim 5"),
            ("f16", {"features": np.zeros((2, 4), np.float16)}, None, "dtype"),
            ("boxes", {"features": np.zeros((2, 4), np.float32), "boxes": np.zeros((3, 4))},
             None, "boxes"),
            ("grid", {"features": np.zeros((2, 4), np.float32)}, {"kind": "grid",
                                                                  "grid": [2, 2]}, "h*w"),
            ("kind", {"features": np.zeros((2, 4), np.float32)}, {"kind": "x"}, "kind"),
            ("__meta__", {"features": np.zeros((2, 4), np.float32)}, None, "reserved"),
        ]
        for key, arrays, attrs, match in cases:
            with pytest.raises(ValueError, match=match):
                w.put(key, arrays, attrs)
    assert list(FeatureStore(tmp_path / "s").keys()) == ["ok"]


def test_writer_dtype_casts_features(tmp_path):
    _write(tmp_path / "s", [("a", {"features": np.ones((2, 4), np.float64)}, None)],
           dtype="float16")
    store = FeatureStore(tmp_path / "s")
    assert store.get("a")["features"].dtype == np.float16 and store.meta["dtype"] == "float16"


def test_an_exception_keeps_written_records_and_marks_the_store_incomplete(tmp_path):
    with pytest.raises(RuntimeError), FeatureStoreWriter(tmp_path / "s") as w:
        w.put("a", {"features": np.ones((2, 4), np.float32)})
        raise RuntimeError("boom")
    store = FeatureStore(tmp_path / "s")
    assert store.meta["complete"] is False and list(store.keys()) == ["a"]


def test_writing_while_views_are_alive_is_refused_then_allowed(tmp_path):
    path = tmp_path / "s"
    _write(path, [("a", {"features": np.ones((2, 4), np.float32)}, None)])
    store = FeatureStore(path)
    view = store.get("a")["features"]
    with pytest.raises(ValueError, match="still alive"):
        FeatureStoreWriter(path)
    del view
    gc.collect()
    _write(path, [("b", {"features": np.ones((2, 4), np.float32)}, None)])
    assert len(store) == 2 and "b" in store  # the reader reopened and sees the new record


def test_appending_with_different_locked_meta_is_refused(tmp_path):
    path = tmp_path / "s"
    with FeatureStoreWriter(path, meta={"backbone": "resnet152"}) as w:
        w.put("a", {"features": np.ones((2, 4), np.float32)})
    with pytest.raises(ValueError, match=r"backbone='resnet152'.*backbone='resnet50'"):
        FeatureStoreWriter(path, meta={"backbone": "resnet50"}, same_meta=("backbone",))
    with FeatureStoreWriter(path, meta={"backbone": "resnet152"}, same_meta=("backbone",)) as w:
        w.put("b", {"features": np.ones((2, 4), np.float32)})
    assert len(FeatureStore(path)) == 2


def test_key_for_image_is_the_file_stem():
    assert key_for_image("/data/coco/train2014/COCO_train2014_000000000009.jpg") == \
        "COCO_train2014_000000000009"


# --------------------------------------------------------------------------------------------
# CLI: import-npy


def _npy_dir(tmp_path):
    d = tmp_path / "npy"
    d.mkdir()
    feats_a = RNG.standard_normal((3, 8)).astype(np.float32)
    feats_b = RNG.standard_normal((5, 8)).astype(np.float32)
    bbox = (RNG.random((3, 4)) * 50).astype(np.float64)
    np.save(d / "COCO_val2014_000000000042.npy", feats_a)
    np.save(d / "COCO_val2014_000000000042_info.npy", {
        "bbox": bbox, "image_width": 640, "image_height": 427, "num_boxes": 3,
        "objects": np.array([1, 2, 3]), "cls_prob": np.zeros((3, 5)),
    }, allow_pickle=True)
    np.save(d / "img_b.npy", feats_b[None])  # (1, N, D) is accepted
    np.savez(d / "img_c.npz", x=feats_b[:2], bbox=bbox[:2], image_w=np.int64(33),
             image_h=np.int64(44), num_bbox=np.int64(2))
    return d, feats_a, feats_b, bbox


def test_import_npy_without_allow_pickle_skips_info_files(tmp_path, capsys):
    d, feats_a, feats_b, bbox = _npy_dir(tmp_path)
    out = tmp_path / "store"
    assert main(["import-npy", "--dir", str(d), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 _info.npy" in err and "arbitrary code" in err and "--allow-pickle" in err
    store = FeatureStore(out)
    assert sorted(store.keys()) == ["COCO_val2014_000000000042", "img_b", "img_c"]
    rec = store.get("COCO_val2014_000000000042")
    assert set(rec) == {"features"}
    np.testing.assert_array_equal(rec["features"], feats_a)
    np.testing.assert_array_equal(store.get("img_b")["features"], feats_b)
    assert store.attrs("img_b") == {"kind": "region"}
    npz, npz_attrs = store.get_record("img_c")  # .npz holds no pickle: boxes are imported
    np.testing.assert_array_equal(npz["features"], feats_b[:2])
    np.testing.assert_array_equal(npz["boxes"], bbox[:2].astype(np.float32))
    assert npz_attrs == {"kind": "region", "image_w": 33, "image_h": 44, "num_boxes": 2}


def test_import_npy_with_allow_pickle_reads_boxes_and_sizes(tmp_path, capsys):
    d, feats_a, _, bbox = _npy_dir(tmp_path)
    out = tmp_path / "store"
    assert main(["import-npy", "--dir", str(d), "--out", str(out), "--allow-pickle",
                 "--dtype", "float16", "--no-progress"]) == 0
    assert "skipped" not in capsys.readouterr().err
    store = FeatureStore(out)
    rec, attrs = store.get_record("COCO_val2014_000000000042")
    np.testing.assert_array_equal(rec["features"], feats_a.astype(np.float16))
    np.testing.assert_array_equal(rec["boxes"], bbox.astype(np.float32))
    np.testing.assert_array_equal(rec["objects"], [1, 2, 3])
    assert attrs == {"kind": "region", "image_w": 640, "image_h": 427, "num_boxes": 3}
    assert store.meta["dtype"] == "float16"


def test_allow_pickle_help_states_the_risk():
    assert "np.load(allow_pickle=True) executes arbitrary code from an untrusted file" in \
        PICKLE_HELP
    help_text = build_parser()._subparsers._group_actions[0].choices["import-npy"].format_help()
    assert "executes arbitrary code from an untrusted file" in " ".join(help_text.split())


def test_import_npy_grid_kind(tmp_path):
    d = tmp_path / "npy"
    d.mkdir()
    np.save(d / "g.npy", np.arange(36, dtype=np.float32).reshape(9, 4))
    assert main(["import-npy", "--dir", str(d), "--out", str(tmp_path / "s"), "--kind", "grid",
                 "--no-progress"]) == 0
    assert FeatureStore(tmp_path / "s").attrs("g") == {"kind": "grid", "grid": [3, 3]}


def test_import_npy_errors(tmp_path, capsys):
    d = tmp_path / "npy"
    d.mkdir()
    np.save(d / "bad.npy", np.zeros((2, 3, 4), np.float32))
    assert main(["import-npy", "--dir", str(d), "--out", str(tmp_path / "s")]) == 1
    assert "bad.npy" in capsys.readouterr().err
    assert main(["import-npy", "--dir", str(tmp_path / "nope"), "--out", str(tmp_path / "t")]) \
        == 1


# --------------------------------------------------------------------------------------------
# CLI: import-tsv


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).decode()


def _write_tsv(path, rows):
    fields = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
    with path.open("w", newline="") as f:  # the official generate_tsv.py encoding
        writer = csv.DictWriter(f, delimiter="\t", fieldnames=fields)
        for row in rows:
            writer.writerow(row)


def test_import_tsv_round_trip(tmp_path):
    csv.field_size_limit(131072)  # the default: the importer must raise it for big rows
    rows, expected = [], {}
    for image_id, n in ((9, 10), (25, 3)):
        boxes = (RNG.random((n, 4)) * 300).astype(np.float32)
        feats = RNG.standard_normal((n, 4096)).astype(np.float32)  # > 131072 base64 chars
        rows.append({"image_id": image_id, "image_w": 640, "image_h": 480 + image_id,
                     "num_boxes": n, "boxes": _b64(boxes), "features": _b64(feats)})
        expected[f"COCO_train2014_{image_id:012d}"] = (boxes, feats, image_id)
    _write_tsv(tmp_path / "a.tsv", rows[:1])
    _write_tsv(tmp_path / "b.tsv", rows[1:])
    out = tmp_path / "store"
    assert main(["import-tsv", "--tsv", str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv"),
                 "--out", str(out), "--key-template", "COCO_train2014_{image_id:012d}",
                 "--no-progress"]) == 0
    store = FeatureStore(out)
    assert sorted(store.keys()) == sorted(expected)
    for key, (boxes, feats, image_id) in expected.items():
        rec, attrs = store.get_record(key)
        np.testing.assert_array_equal(rec["boxes"], boxes)
        np.testing.assert_array_equal(rec["features"], feats)
        assert attrs == {"kind": "region", "image_w": 640, "image_h": 480 + image_id,
                         "num_boxes": boxes.shape[0], "image_id": image_id}
    assert store.meta["feature_dim"] == 4096 and store.meta["kind"] == "region"


def test_import_tsv_malformed_row_names_file_line_and_field(tmp_path, capsys):
    good = {"image_id": 1, "image_w": 10, "image_h": 10, "num_boxes": 2,
            "boxes": _b64(np.zeros((2, 4))), "features": _b64(np.zeros((2, 8)))}
    bad = dict(good, image_id=2, boxes="!!not base64!!")
    _write_tsv(tmp_path / "x.tsv", [good, bad])
    assert main(["import-tsv", "--tsv", str(tmp_path / "x.tsv"), "--out",
                 str(tmp_path / "s"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'x.tsv'}:2" in err and "'boxes'" in err
    wrong_count = dict(good, image_id=3, boxes=_b64(np.zeros((3, 4))))
    short = "4\t10\t10\n"
    _write_tsv(tmp_path / "y.tsv", [good, wrong_count])
    with (tmp_path / "y.tsv").open("a") as f:
        f.write(short)
    assert main(["import-tsv", "--tsv", str(tmp_path / "y.tsv"), "--out",
                 str(tmp_path / "t"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'y.tsv'}:2" in err and "num_boxes * 4" in err
    _write_tsv(tmp_path / "z.tsv", [good])
    with (tmp_path / "z.tsv").open("a") as f:
        f.write(short)
    assert main(["import-tsv", "--tsv", str(tmp_path / "z.tsv"), "--out",
                 str(tmp_path / "u"), "--no-progress"]) == 1
    assert f"{tmp_path / 'z.tsv'}:2: expected 6 tab-separated fields" in capsys.readouterr().err


def test_import_tsv_key_template_error_and_duplicates(tmp_path, capsys):
    row = {"image_id": "abc", "image_w": 10, "image_h": 10, "num_boxes": 1,
           "boxes": _b64(np.zeros((1, 4))), "features": _b64(np.zeros((1, 8)))}
    _write_tsv(tmp_path / "x.tsv", [row])
    assert main(["import-tsv", "--tsv", str(tmp_path / "x.tsv"), "--out", str(tmp_path / "s"),
                 "--key-template", "COCO_{image_id:012d}", "--no-progress"]) == 1
    assert "cannot format image_id 'abc'" in capsys.readouterr().err
    _write_tsv(tmp_path / "d.tsv", [row, row])
    assert main(["import-tsv", "--tsv", str(tmp_path / "d.tsv"), "--out", str(tmp_path / "t"),
                 "--no-progress"]) == 1
    assert f"{tmp_path / 'd.tsv'}:2: key 'abc' already exists" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# CLI: extract


@pytest.fixture()
def image_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    rgb = RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "rgb.png")
    rgba = RNG.integers(0, 255, (24, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    Image.fromarray(RNG.integers(0, 255, (20, 36), dtype=np.uint8), "L").save(d / "gray.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated = Image.fromarray(RNG.integers(0, 255, (32, 48, 3), dtype=np.uint8))  # 48 wide
    rotated.save(d / "exif.jpeg", exif=exif.tobytes())
    return d


def test_extract_grid_features(image_dir, tmp_path, capsys):
    out = tmp_path / "store"
    argv = ["extract", "--images", str(image_dir), "--backbone", "resnet18", "--out", str(out),
            "--image-size", "64", "--batch-size", "3", "--num-workers", "1", "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "randomly initialised" in captured.err
    assert "wrote 4 records (2x2 grid, 512 channels, float16)" in captured.out
    store = FeatureStore(out)
    assert sorted(store.keys()) == ["alpha", "exif", "gray", "rgb"]
    sizes = {"rgb": (40, 30), "alpha": (24, 24), "gray": (36, 20), "exif": (32, 48)}
    for key, (w, h) in sizes.items():
        rec, attrs = store.get_record(key)
        assert rec["features"].shape == (4, 512) and rec["features"].dtype == np.float16
        assert np.isfinite(rec["features"]).all() and rec["features"].any()
        assert attrs == {"kind": "grid", "grid": [2, 2], "image_w": w, "image_h": h}
    meta = store.meta
    assert meta["backbone"] == "resnet18" and meta["pretrained"] is False
    assert meta["image_size"] == 64 and meta["feature_dim"] == 512 and meta["kind"] == "grid"
    assert meta["transform"]["size"] == 64
    assert meta["created_by"].startswith("python -m training.features extract --images")


def test_extract_with_weights_matches_a_direct_forward(image_dir, tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    for m in reference.modules():  # non-trivial BN statistics, so the loaded values matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    out = tmp_path / "store"
    assert main(["extract", "--images", str(image_dir), "--backbone", "resnet18", "--weights",
                 str(weights), "--out", str(out), "--image-size", "64", "--num-workers", "0",
                 "--dtype", "float32", "--device", "cpu", "--no-progress"]) == 0
    trunk = torch.nn.Sequential(*list(reference.children())[:-2]).eval()
    transform = ImageTransform(size=64)
    store = FeatureStore(out)
    assert store.meta["pretrained"] is True and store.meta["weights"] == str(weights.resolve())
    for name in ("rgb.png", "alpha.png", "gray.jpg", "exif.jpeg"):
        with torch.no_grad():
            fmap = trunk(transform(load_image(image_dir / name))[None])[0]  # (512, 2, 2)
        expected = fmap.permute(1, 2, 0).reshape(4, 512).numpy()  # row-major cells
        got = store.get(key_for_image(name))["features"]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_extract_rejects_bad_weights(image_dir, tmp_path, capsys):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"definitely not a state dict")
    assert main(["extract", "--images", str(image_dir), "--backbone", "resnet18", "--weights",
                 str(bad), "--out", str(tmp_path / "s"), "--device", "cpu"]) == 1
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    wrong = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    assert main(["extract", "--images", str(image_dir), "--backbone", "resnet18", "--weights",
                 str(wrong), "--out", str(tmp_path / "s"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert str(wrong) in err and "unexpected keys" in err


def test_extract_device_cuda_without_cuda_is_a_clear_error(image_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["extract", "--images", str(image_dir), "--backbone", "resnet18", "--out",
                 str(tmp_path / "s"), "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["extract", "--images", str(image_dir), "--backbone", "resnet18", "--out",
                 str(tmp_path / "s"), "--device", "tpu"]) == 1
    assert "--device must be" in capsys.readouterr().err


def test_extract_duplicate_stems_and_bad_images(image_dir, tmp_path, capsys):
    sub = image_dir / "sub"
    sub.mkdir()
    Image.new("RGB", (8, 8)).save(sub / "rgb.jpg")
    base = ["extract", "--images", str(image_dir), "--backbone", "resnet18", "--image-size",
            "32", "--num-workers", "0", "--device", "cpu", "--no-progress"]
    assert main([*base, "--recursive", "--out", str(tmp_path / "s1")]) == 1
    err = capsys.readouterr().err
    assert str(image_dir / "rgb.png") in err and str(sub / "rgb.jpg") in err
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert main([*base, "--out", str(tmp_path / "s2")]) == 1
    assert str(image_dir / "broken.jpg") in capsys.readouterr().err
    assert main([*base, "--skip-bad", "--out", str(tmp_path / "s3")]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable image" in captured.err and "broken.jpg" in captured.err
    store = FeatureStore(tmp_path / "s3")
    assert sorted(store.keys()) == ["alpha", "exif", "gray", "rgb"]
    assert store.attrs("rgb")["grid"] == [1, 1]


def test_extract_skip_existing_resumes(image_dir, tmp_path, capsys):
    base = ["extract", "--images", str(image_dir), "--backbone", "resnet18", "--image-size",
            "32", "--num-workers", "0", "--device", "cpu", "--no-progress", "--out",
            str(tmp_path / "s")]
    assert main(base) == 0
    assert main(base) == 1  # every key is already there
    assert "already exists" in capsys.readouterr().err
    assert main([*base, "--skip-existing"]) == 0
    assert "wrote 0 records" in capsys.readouterr().out
    assert main([*base, "--skip-existing", "--image-size", "64"]) == 1  # another transform
    assert "image_size=32" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# CLI: info and arguments


def test_info_prints_meta_and_keys(tmp_path, capsys):
    _write(tmp_path / "s", [(f"k{i}", _region(2, 4), {"kind": "region"}) for i in range(7)],
           created_by="pytest")
    assert main(["info", str(tmp_path / "s"), "--num-keys", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 7 and report["keys"] == ["k0", "k1", "k2"]
    assert report["meta"]["created_by"] == "pytest"
    assert report["example"]["arrays"]["features"] == {"dtype": "float32", "shape": [2, 4]}
    assert report["example"]["arrays"]["boxes"]["shape"] == [2, 4]
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "feature store not found" in capsys.readouterr().err


def test_argument_errors_return_2(capsys):
    assert main([]) == 2
    assert main(["extract", "--images", "x"]) == 2  # --out missing
    assert main(["extract", "--images", "x", "--out", "y", "--backbone", "vgg16"]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()
