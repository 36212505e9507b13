"""TextZoom-format LMDBs as a LightningDataModule with exact multi-process evaluation.

The module builds its own samplers (run the trainer with `use_distributed_sampler=False`): a seeded
DistributedSampler for training, and for validation/test an unpadded split (rank r reads r::world), so sums of
per-sample metrics over ranks equal the single-process sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Sampler, Subset

from stisr_lightning.data.charset import TEXT_PROTOCOLS
from stisr_lightning.data.paired_folder import open_text_dataset


class UnpaddedDistributedSampler(Sampler[int]):
    """Rank r gets indices r, r+world, r+2*world, ...: every index exactly once over all ranks, no padding."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"UnpaddedDistributedSampler: rank {rank} not in [0, {num_replicas})")
        self.length = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))


TEST_SET_OPTIONS = ("hr_size", "lr_size", "lr_from_hr")
"""What a test-set entry may change for itself (TextSR Table 1 reads one test set at five input sizes)."""


def test_set_path(entry: str | Mapping[str, Any]) -> str:
    """The LMDB (or paired folder) path of a `test_sets` entry: a path, or a mapping with `path` and per-set options."""
    return entry if isinstance(entry, str) else entry["path"]


def split_train_val(length: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic held-out split of `length` training indices: (train, val), both sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    val_count = min(length - 1, math.ceil(length * val_fraction)) if val_fraction > 0 else 0
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[val_count:]), sorted(order[:val_count])


class STISRDataModule(L.LightningDataModule):
    """Training LMDBs (a seeded fraction held out for validation) and named test LMDBs, in TextZoom format.

    A `test_sets` value is an LMDB path, or a mapping `{path, hr_size?, lr_size?, lr_from_hr?}` whose options
    override the module-wide ones for that set only. `lr_from_hr` makes every LR image by resizing the HR image
    (clean down-sampling, TextSR's protocol) instead of reading the LR record.
    """

    def __init__(
        self,
        train_dirs: list[str],
        test_sets: dict[str, str | dict[str, Any]],
        val_fraction: float = 0.05,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        mask: bool = False,
        hr_size: tuple[int, int] = (32, 128),
        lr_size: tuple[int, int] = (16, 64),
        on_corrupt: str = "skip",
        seed: int = 0,
        max_label_length: int | None = None,
        drop_last: bool = True,
        lr_from_hr: bool = False,
        val_test_sets: list[str] | None = None,
        text_protocol: str = "textzoom",
    ) -> None:
        """`val_test_sets`: validate (and so pick the best checkpoint) on these test sets, concatenated, and train on
        every training pair - the official TextZoom / TBSRN / TATT / LEMMA protocol, which keeps the model that scores
        best on TextZoom's test subsets (it sums their accuracies; the concatenation weights them by size). None (the
        default) holds `val_fraction` of the training pairs out instead, so that no test image chooses the model.
        `text_protocol`: how labels are filtered and compared (`charset.TEXT_PROTOCOLS`): 'textzoom' (lower-case
        [0-9a-z]) or 'unicode' (every script; Chinese text lines)."""
        super().__init__()
        if text_protocol not in TEXT_PROTOCOLS:
            raise ValueError(f"data.text_protocol: unknown protocol {text_protocol!r} (known: {', '.join(TEXT_PROTOCOLS)})")
        self.text_protocol = text_protocol
        label_filter, self.compare_filter = TEXT_PROTOCOLS[text_protocol]
        self.train_dirs = list(train_dirs)
        self.test_sets = dict(test_sets)
        for name, entry in self.test_sets.items():
            if isinstance(entry, Mapping):
                unknown = sorted(set(entry) - {"path", *TEST_SET_OPTIONS})
                if "path" not in entry or unknown:
                    problem = f"unknown key {unknown[0]!r}" if unknown else "no 'path'"
                    raise ValueError(f"data.test_sets.{name}: {problem} (allowed: path, {', '.join(TEST_SET_OPTIONS)})")
        self.val_fraction = val_fraction
        unknown = sorted(set(val_test_sets or []) - set(self.test_sets))
        if unknown:
            raise ValueError(f"data.val_test_sets: {unknown[0]!r} is not a test set (test sets: {', '.join(self.test_sets)})")
        self.val_test_sets = list(val_test_sets) if val_test_sets else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.dataset_args = {"hr_size": tuple(hr_size), "lr_size": tuple(lr_size), "mask": mask,
                             "on_corrupt": on_corrupt, "max_label_length": max_label_length,
                             "lr_from_hr": lr_from_hr, "label_filter": label_filter}
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_datasets: list[Dataset] = []

    @property
    def test_set_names(self) -> list[str]:
        return list(self.test_sets)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            if not self.train_dirs:
                raise ValueError("STISRDataModule: train_dirs is empty")
            full = ConcatDataset([open_text_dataset(path, **self.dataset_args) for path in self.train_dirs])
            if self.val_test_sets:
                self.train_set = full
                self.val_set = ConcatDataset([self._test_dataset(self.test_sets[name]) for name in self.val_test_sets])
            else:
                train_indices, val_indices = split_train_val(len(full), self.val_fraction, self.seed)
                self.train_set, self.val_set = Subset(full, train_indices), Subset(full, val_indices)
        if stage in (None, "test") and not self.test_datasets:
            self.test_datasets = [self._test_dataset(entry) for entry in self.test_sets.values()]

    def _test_dataset(self, entry: str | Mapping[str, Any]) -> Dataset:
        options = {} if isinstance(entry, str) else {key: entry[key] for key in TEST_SET_OPTIONS if key in entry}
        sizes = {key: tuple(options[key]) for key in ("hr_size", "lr_size") if key in options}
        return open_text_dataset(test_set_path(entry), **{**self.dataset_args, **options, **sizes})

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          drop_last=drop_last, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        if world > 1:
            sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                         drop_last=self.drop_last)
        else:
            sampler = torch.utils.data.RandomSampler(self.train_set, generator=torch.Generator().manual_seed(self.seed))
        return self._loader(self.train_set, self.batch_size, sampler, drop_last=self.drop_last)

    def calibration_dataloader(self, images: int) -> DataLoader:
        """The first `images` training pairs in a fixed order, the same on every rank: the activation statistics of
        post-training quantization (ACIQ calibrates on 32 training images)."""
        self.setup("fit")
        subset = Subset(self.train_set, range(min(images, len(self.train_set))))
        return DataLoader(subset, batch_size=self.eval_batch_size, num_workers=0)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        world, rank = self._world()
        return self._loader(dataset, self.eval_batch_size, UnpaddedDistributedSampler(dataset, world, rank))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(dataset) for dataset in self.test_datasets]
