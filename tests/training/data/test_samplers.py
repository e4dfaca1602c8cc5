from collections import Counter

import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from training.data import MultiTaskBatchSampler, collate

SIZES = [120, 360, 60]


def _which(sampler, index):
    for d in reversed(range(len(sampler.sizes))):
        if index >= sampler.offsets[d]:
            return d
    raise AssertionError


def test_every_batch_comes_from_one_dataset_and_size_proportional_is_exact():
    s = MultiTaskBatchSampler(SIZES, batch_size=10, seed=3)
    batches = list(s)
    per = Counter()
    for b in batches:
        ds = {_which(s, i) for i in b}
        assert len(ds) == 1 and len(b) == 10
        per[ds.pop()] += 1
    assert per == {0: 12, 1: 36, 2: 6}
    # one epoch of one rank covers each dataset once
    rows = [i for b in batches for i in b]
    assert sorted(rows) == list(range(sum(SIZES)))


def test_ranks_agree_on_the_schedule_and_split_rows_without_overlap():
    ranks = [MultiTaskBatchSampler(SIZES, batch_size=5, seed=9, rank=r, world_size=3)
             for r in range(3)]
    schedules = [r.schedule() for r in ranks]
    assert schedules[0] == schedules[1] == schedules[2]
    epochs = [list(r) for r in ranks]
    for step in range(len(epochs[0])):
        datasets = {_which(ranks[0], e[step][0]) for e in epochs}
        assert len(datasets) == 1  # same dataset on every rank at every step
    rows = [set(i for b in e for i in b) for e in epochs]
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2]) and not (rows[0] & rows[2])


def test_temperature_proportions_match_size_to_the_one_over_t():
    T = 2.0
    s = MultiTaskBatchSampler(SIZES, batch_size=1, strategy="temperature", temperature=T,
                              seed=1)
    counts = Counter()
    for epoch in range(5):
        s.set_epoch(epoch)
        counts.update(_which(s, b[0]) for b in s)
    total = sum(counts.values())
    weights = [n ** (1 / T) for n in SIZES]
    for d, w in enumerate(weights):
        p = w / sum(weights)
        # binomial standard error; 4.5 sigma keeps the test deterministic-enough and sharp
        sigma = (p * (1 - p) / total) ** 0.5
        assert abs(counts[d] / total - p) < 4.5 * sigma, (d, counts[d] / total, p)
    # T=2 flattens: the small dataset gets more than its size share
    assert counts[2] / total > SIZES[2] / sum(SIZES)


def test_temperature_weights_scale_each_dataset_probability():
    T, W = 2.0, [3.0, 1.0, 0.5]
    s = MultiTaskBatchSampler(SIZES, batch_size=1, strategy="temperature", temperature=T,
                              weights=W, seed=4)
    counts = Counter()
    for epoch in range(5):
        s.set_epoch(epoch)
        counts.update(_which(s, b[0]) for b in s)
    total = sum(counts.values())
    weights = [w * n ** (1 / T) for w, n in zip(W, SIZES)]
    for d, w in enumerate(weights):
        p = w / sum(weights)
        sigma = (p * (1 - p) / total) ** 0.5
        assert abs(counts[d] / total - p) < 4.5 * sigma, (d, counts[d] / total, p)
    # the weight of 3 puts dataset 0 (a third of dataset 1's size) ahead of dataset 1
    assert counts[0] > counts[1]
    # weights of 1 are the unweighted schedule, bit for bit
    plain = MultiTaskBatchSampler(SIZES, batch_size=4, strategy="temperature", seed=4)
    ones = MultiTaskBatchSampler(SIZES, batch_size=4, strategy="temperature", seed=4,
                                 weights=[1, 1, 1])
    assert list(plain) == list(ones)


def test_round_robin_alternates():
    s = MultiTaskBatchSampler(SIZES, batch_size=20, strategy="round_robin", seed=0)
    order = [_which(s, b[0]) for b in s]
    assert order[:6] == [0, 1, 2, 0, 1, 2]
    assert len(order) == 3 * (360 // 20)


def test_epochs_differ_and_same_seed_repeats():
    a = MultiTaskBatchSampler(SIZES, batch_size=10, seed=5)
    b = MultiTaskBatchSampler(SIZES, batch_size=10, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_resume_skips_exactly_the_consumed_batches():
    s = MultiTaskBatchSampler(SIZES, batch_size=10, seed=2, strategy="temperature")
    s.set_epoch(4)
    full = list(s)
    r = MultiTaskBatchSampler(SIZES, batch_size=10, seed=2, strategy="temperature")
    r.load_state_dict({"epoch": 4, "position": 17})
    assert list(r) == full[17:]
    assert list(r) == full  # the skip applies once


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown sampling strategy"):
        MultiTaskBatchSampler(SIZES, batch_size=4, strategy="random")
    with pytest.raises(ValueError, match="at least one sample"):
        MultiTaskBatchSampler([3, 0], batch_size=4)
    with pytest.raises(ValueError, match="rank"):
        MultiTaskBatchSampler(SIZES, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="one positive number per dataset"):
        MultiTaskBatchSampler(SIZES, batch_size=4, strategy="temperature", weights=[1, 2])
    with pytest.raises(ValueError, match="one positive number per dataset"):
        MultiTaskBatchSampler(SIZES, batch_size=4, strategy="temperature", weights=[1, 0, 1])
    with pytest.raises(ValueError, match="need the temperature strategy"):
        MultiTaskBatchSampler(SIZES, batch_size=4, weights=[2, 1, 1])


class _Tagged(Dataset):
    def __init__(self, name: str, n: int, feat: int) -> None:
        self.name, self.n, self.feat = name, n, feat

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        n_boxes = 1 + i % 3
        return {"dataset": self.name, "idx": i,
                "image_features": torch.full((n_boxes, self.feat), float(i)),
                "image_feature_mask": torch.ones(n_boxes, dtype=torch.bool),
                "answers": [f"a{i}"] * 2}


def test_dataloader_with_workers_yields_single_dataset_padded_batches():
    datasets = [_Tagged("a", 30, 4), _Tagged("b", 50, 4)]
    sampler = MultiTaskBatchSampler([len(d) for d in datasets], batch_size=4, seed=0)
    loader = DataLoader(ConcatDataset(datasets), batch_sampler=sampler, collate_fn=collate,
                        num_workers=2)
    n = 0
    for batch in loader:
        assert batch["dataset"] in ("a", "b")
        feats, mask = batch["image_features"], batch["image_feature_mask"]
        assert feats.shape[0] == 4 and feats.shape[2] == 4
        for row, i in enumerate(batch["idx"].tolist()):
            k = 1 + i % 3
            assert mask[row].sum() == k and not mask[row, k:].any()
            assert (feats[row, k:] == 0).all()
        assert batch["answers"][0] == [f"a{batch['idx'][0].item()}"] * 2
        n += 1
    assert n == len(sampler) == 30 // 4 + 50 // 4


def test_collate_refuses_mismatched_samples():
    with pytest.raises(ValueError, match="disagree on fields"):
        collate([{"a": 1}, {"b": 2}])
    with pytest.raises(ValueError, match="differ beyond dim 0"):
        collate([{"x": torch.zeros(2, 3)}, {"x": torch.zeros(2, 4)}])
