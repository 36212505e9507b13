import os

import numpy as np
import pytest
import torch
from PIL import Image

from stisr_lightning.data.datamodule import STISRDataModule, UnpaddedDistributedSampler, split_train_val
from stisr_lightning.data.textzoom import write_textzoom_lmdb

os.environ.setdefault("WANDB_MODE", "disabled")


def _write(path, count, offset=0):
    rng = np.random.default_rng(offset)
    samples = [(Image.fromarray(rng.integers(0, 256, (32, 128, 3), dtype=np.uint8)),
                Image.fromarray(rng.integers(0, 256, (16, 64, 3), dtype=np.uint8)), f"w{offset + i}")
               for i in range(count)]
    write_textzoom_lmdb(path, samples)


@pytest.fixture
def data(tmp_path):
    _write(tmp_path / "train1", 30)
    _write(tmp_path / "train2", 10, offset=30)
    _write(tmp_path / "hard", 5, offset=100)
    _write(tmp_path / "easy", 7, offset=200)
    return tmp_path


def _module(root, **kwargs):
    args = dict(train_dirs=[str(root / "train1"), str(root / "train2")],
                test_sets={"synthetic/hard": str(root / "hard"), "synthetic/easy": str(root / "easy")},
                val_fraction=0.1, batch_size=4, eval_batch_size=3, num_workers=0, seed=1)
    return STISRDataModule(**{**args, **kwargs})


def test_unpadded_sampler_partitions_exactly():
    dataset = list(range(11))
    parts = [list(UnpaddedDistributedSampler(dataset, 3, rank)) for rank in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(parts, [])) == dataset and [len(UnpaddedDistributedSampler(dataset, 3, r)) for r in range(3)] == [4, 4, 3]
    with pytest.raises(ValueError, match="rank 3"):
        UnpaddedDistributedSampler(dataset, 3, 3)


def test_split_is_disjoint_deterministic_and_seeded():
    train, val = split_train_val(40, 0.1, seed=1)
    assert len(val) == 4 and len(train) == 36 and not set(train) & set(val) and sorted(train + val) == list(range(40))
    assert split_train_val(40, 0.1, seed=1) == (train, val)
    assert split_train_val(40, 0.1, seed=2)[1] != val


def test_datamodule_loaders(data):
    module = _module(data)
    module.setup("fit")
    module.setup("test")
    train_labels = [label for batch in module.train_dataloader() for label in batch["label"]]
    val_labels = [label for batch in module.val_dataloader() for label in batch["label"]]
    assert len(val_labels) == 4 and len(train_labels) == 36  # 36 = 9 full batches of 4
    assert not set(train_labels) & set(val_labels)
    assert all(not label.startswith(("w10", "w20")) for label in val_labels)  # never from the test sets
    other = _module(data)
    other.setup("fit")
    assert [label for batch in other.val_dataloader() for label in batch["label"]] == val_labels
    assert module.test_set_names == ["synthetic/hard", "synthetic/easy"]
    loaders = module.test_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [5, 7]
    batch = next(iter(loaders[1]))
    assert batch["hr"].shape == (3, 3, 32, 128) and batch["lr"].shape == (3, 3, 16, 64)
    assert batch["index"].dtype == torch.int64 and batch["label"] == ["w200", "w201", "w202"]


def test_official_protocol_validates_on_the_test_sets_and_trains_on_every_pair(data):
    module = _module(data, val_test_sets=["synthetic/easy", "synthetic/hard"])
    module.setup("fit")
    val_labels = [label for batch in module.val_dataloader() for label in batch["label"]]
    assert val_labels == [f"w{200 + i}" for i in range(7)] + [f"w{100 + i}" for i in range(5)]  # easy, then hard
    assert len(module.train_set) == 40
    with pytest.raises(ValueError, match="data.val_test_sets: 'synthetic/medium' is not a test set"):
        _module(data, val_test_sets=["synthetic/medium"])


class _FakeTrainer:
    def __init__(self, world_size, global_rank):
        self.world_size, self.global_rank = world_size, global_rank


def test_distributed_samplers(data):
    seen = []
    for rank in range(2):
        module = _module(data, mask=True)
        module.trainer = _FakeTrainer(2, rank)
        module.setup(None)
        train = module.train_dataloader()
        assert isinstance(train.sampler, torch.utils.data.DistributedSampler) and len(train.sampler) == 18
        seen.append([label for loader in module.test_dataloader() for b in loader for label in b["label"]])
        assert next(iter(module.val_dataloader()))["hr"].shape[1] == 4
    assert sorted(seen[0] + seen[1]) == sorted([f"w{100 + i}" for i in range(5)] + [f"w{200 + i}" for i in range(7)])


def test_test_set_entries_carry_their_own_sizes(data):
    """TextSR's Table 1 reads one test set at several input sizes, LR made from the HR image."""
    module = _module(data, test_sets={
        "sizes/8x32": {"path": str(data / "easy"), "lr_size": [8, 32], "hr_size": [32, 128], "lr_from_hr": True},
        "sizes/plain": str(data / "easy"),
    })
    module.setup("test")
    small, plain = (next(iter(loader)) for loader in module.test_dataloader())
    assert small["lr"].shape == (3, 3, 8, 32) and plain["lr"].shape == (3, 3, 16, 64)
    assert torch.equal(small["hr"], plain["hr"])
    hr = np.asarray(Image.fromarray((small["hr"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
    expected = np.asarray(Image.fromarray(hr).resize((32, 8), Image.BICUBIC), dtype=np.float32) / 255
    assert np.abs(small["lr"][0].permute(1, 2, 0).numpy() - expected).max() < 2 / 255  # LR = bicubic(HR), not the LR record


def test_test_set_entry_errors_name_the_set_and_key(data):
    with pytest.raises(ValueError, match=r"data.test_sets.sizes/a: unknown key 'scale'"):
        _module(data, test_sets={"sizes/a": {"path": str(data / "easy"), "scale": 4}})
    with pytest.raises(ValueError, match=r"data.test_sets.sizes/b: no 'path'"):
        _module(data, test_sets={"sizes/b": {"lr_size": [8, 32]}})


def test_text_protocol_sets_the_label_and_comparison_filters(data):
    module = _module(data, text_protocol="unicode")
    module.setup("test")
    assert module.compare_filter == "unicode"
    assert {dataset.label_filter for dataset in module.test_datasets} == {"unicode"}
    assert _module(data).compare_filter == "lower"
    with pytest.raises(ValueError, match=r"data.text_protocol: unknown protocol 'ctr'"):
        _module(data, text_protocol="ctr")
