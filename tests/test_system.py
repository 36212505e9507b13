import math

import pytest
import torch
from lightning.pytorch import Trainer

from conftest import HR_GRAY, LR_GRAY, uniform_pairs
from fakes import REPO, BrightnessRecognizer
from stisr_lightning.data.datamodule import STISRDataModule
from stisr_lightning.data.textzoom import write_textzoom_lmdb
from stisr_lightning.losses.mix import LossMix
from stisr_lightning.losses.pixel import PixelMSE
from stisr_lightning.models.generators.bicubic import Bicubic
from stisr_lightning.models.generators.srcnn import SRCNN
from stisr_lightning.systems.base import STISRSystem


def datamodule(root, **overrides):
    options = dict(
        train_dirs=[str(root / "train")],
        test_sets={"tiny/easy": str(root / "test" / "easy"), "tiny/medium": str(root / "test" / "medium")},
        batch_size=4,
        eval_batch_size=3,
        num_workers=0,
        mask=True,
    )
    return STISRDataModule(**(options | overrides))


def quiet_trainer(**overrides) -> Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    return Trainer(**(options | overrides))


def test_test_loop_matches_hand_computed_accuracy_and_psnr(tiny_textzoom):
    system = STISRSystem(Bicubic(), recognizers={"brightness": BrightnessRecognizer()})
    quiet_trainer().test(system, datamodule=datamodule(tiny_textzoom))
    results = system.test_report.results
    assert results["test/tiny/easy/brightness/acc"] == pytest.approx(4 / 6)
    assert results["test/tiny/medium/brightness/acc"] == pytest.approx(3 / 4)
    assert results["test/tiny/average/brightness/acc"] == pytest.approx(7 / 10)
    bright_psnr = 20 * math.log10(255 / (HR_GRAY - LR_GRAY))
    dark_psnr = 20 * math.log10(255 / (round(HR_GRAY * 0.2) - round(LR_GRAY * 0.2)))
    assert results["test/tiny/easy/psnr"] == pytest.approx(bright_psnr, abs=1e-3)
    assert results["test/tiny/medium/psnr"] == pytest.approx(dark_psnr, abs=1e-3)
    assert results["test/tiny/average/psnr"] == pytest.approx((6 * bright_psnr + 4 * dark_psnr) / 10, abs=1e-3)
    assert system.test_report.set_sizes == {"tiny/easy": 6, "tiny/medium": 4}
    assert len(system.test_report.samples["tiny/easy"].label) == 6


class ChineseReader(BrightnessRecognizer):
    """Reads '中文' from bright images and '文字' from dark ones."""

    def read(self, images):
        return ["中文" if text == "a" else "文字" for text in super().read(images)]


def test_unicode_protocol_scores_chinese_labels_that_textzoom_would_erase(tmp_path):
    """3 bright images labelled '中文' (read right), 2 bright labelled '汉字' (read wrong): 3 / 5, not 5 / 5."""
    write_textzoom_lmdb(tmp_path / "train", uniform_pairs(["中文"] * 4, []))
    write_textzoom_lmdb(tmp_path / "test", uniform_pairs(["中文"] * 3 + ["汉字"] * 2, []))
    for protocol, expected in (("unicode", 3 / 5), ("textzoom", 5 / 5)):
        system = STISRSystem(Bicubic(), recognizers={"reader": ChineseReader()})
        module = datamodule(tmp_path, test_sets={"ctr/test": str(tmp_path / "test")}, text_protocol=protocol)
        quiet_trainer().test(system, datamodule=module)
        assert system.test_report.results["test/ctr/test/reader/acc"] == pytest.approx(expected)
        assert system.test_report.text_filter == {"unicode": "unicode", "textzoom": "lower"}[protocol]


def test_seconds_per_image_times_super_resolution_alone(tiny_textzoom, monkeypatch):
    """A fake clock that only the generator (1 s per batch) and the recognizer (100 s per batch) advance."""
    clock = {"now": 0.0}
    monkeypatch.setattr("stisr_lightning.metrics.evaluation.perf_counter", lambda: clock["now"])

    class OneSecondBicubic(Bicubic):
        def forward(self, lr):
            clock["now"] += 1.0
            return super().forward(lr)

    class SlowReader(BrightnessRecognizer):
        def read(self, images):
            clock["now"] += 100.0
            return super().read(images)

    system = STISRSystem(OneSecondBicubic(), recognizers={"brightness": SlowReader()})
    quiet_trainer().test(system, datamodule=datamodule(tiny_textzoom))  # batches of 3: easy 3 + 3, medium 3 + 1
    results = system.test_report.results
    assert results["test/tiny/easy/seconds_per_image"] == pytest.approx(2 / 6)
    assert results["test/tiny/medium/seconds_per_image"] == pytest.approx(2 / 4)
    assert results["test/tiny/average/seconds_per_image"] == pytest.approx(4 / 10)


def test_training_reduces_loss_and_frozen_recognizers_stay_out_of_checkpoints(tiny_textzoom, tmp_path):
    torch.manual_seed(0)
    loss = LossMix({"mse": PixelMSE()})
    system = STISRSystem(SRCNN(in_channels=4), loss=loss, recognizers={"brightness": BrightnessRecognizer()})
    data = datamodule(tiny_textzoom)
    batch = {k: v for k, v in next(iter(_train_loader(data))).items()}
    before = loss(system.forward_train(batch), batch)[0].item()
    trainer = quiet_trainer(max_steps=60, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(system, datamodule=data)
    after = loss(system.forward_train(batch), batch)[0].item()
    assert after < 0.5 * before
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    saved = torch.load(tmp_path / "model.ckpt", weights_only=False)["state_dict"]
    assert saved and all(key.startswith("generator.") for key in saved)


def _train_loader(data: STISRDataModule):
    data.setup("fit")
    return data.train_dataloader()


def test_unknown_recognizer_names_are_rejected():
    with pytest.raises(ValueError, match="'crnn' is not configured"):
        STISRSystem(Bicubic(), recognizers={"brightness": BrightnessRecognizer()}, val_recognizer="crnn")


def test_bicubic_cannot_be_trained():
    with pytest.raises(RuntimeError, match="no trainable parameters"):
        STISRSystem(Bicubic(), loss=LossMix({"mse": PixelMSE()})).configure_optimizers()


def test_lpips_without_backbone_is_not_available_and_text_fid_is_reported(tiny_textzoom):
    from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN

    system = STISRSystem(Bicubic(), recognizers={"easyocr": EasyOCRCRNN()}, lpips_net="vgg", fid_recognizer="easyocr")
    quiet_trainer().test(system, datamodule=datamodule(tiny_textzoom))
    results = system.test_report.results
    assert math.isnan(results["test/tiny/easy/lpips"])  # no ImageNet backbone in the hub cache here
    assert math.isfinite(results["test/tiny/easy/fid_text"]) and results["test/tiny/easy/fid_text"] >= 0
    assert "test/tiny/average/fid_text" not in results  # a Frechet distance does not average over subsets


class _RecognizerHoldingLoss(PixelMSE):
    """A loss term that owns a frozen recognizer, as the text-focus loss does."""

    def __init__(self):
        super().__init__()
        from stisr_lightning.models.recognizers.crnn import CRNN

        self.recognizer = CRNN(charset="ab", hidden_size=8).freeze()


def test_frozen_recognizers_inside_loss_terms_stay_out_of_checkpoints(tiny_textzoom, tmp_path):
    system = STISRSystem(SRCNN(in_channels=4), loss=LossMix({"held": _RecognizerHoldingLoss()}))
    checkpoint = {"state_dict": system.state_dict()}
    assert any(key.startswith("loss.terms.held.recognizer.") for key in checkpoint["state_dict"])
    system.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and all(key.startswith("generator.") for key in checkpoint["state_dict"])
    system.on_load_checkpoint(checkpoint)  # the frozen weights come back from the live module
    assert system.load_state_dict(checkpoint["state_dict"]) is not None


def test_generator_group_lrs_put_named_submodules_in_their_own_group():
    generator = SRCNN(in_channels=4)
    first = next(name for name, _ in generator.named_children())
    system = STISRSystem(generator, loss=LossMix({"mse": PixelMSE()}), generator_group_lrs={first: 1e-4})
    groups = system.configure_optimizers().param_groups
    assert [group["lr"] for group in groups] == [1e-3, 1e-4]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in generator.get_submodule(first).parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(generator.parameters()))
    with pytest.raises(ValueError, match="no submodule 'prior'"):
        STISRSystem(generator, generator_group_lrs={"prior": 1e-4})


def test_compile_targets_train_compiled_and_keep_checkpoint_keys(tiny_textzoom, tmp_path):
    torch.manual_seed(0)
    system = STISRSystem(SRCNN(in_channels=4), loss=LossMix({"mse": PixelMSE()}), compile_targets=["generator"])
    keys = list(system.state_dict())
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(system, datamodule=datamodule(tiny_textzoom))
    assert system.generator._compiled_call_impl is not None
    assert list(system.state_dict()) == keys
    eager = SRCNN(in_channels=4)
    eager.load_state_dict(system.generator.state_dict())
    lr = torch.rand(2, 4, 16, 64)
    with torch.no_grad():
        torch.testing.assert_close(system.generator(lr), eager(lr), atol=1e-5, rtol=1e-4)


def test_compile_targets_name_submodules_or_methods():
    system = STISRSystem(SRCNN(in_channels=4), compile_targets=["generator.forward"])
    system.configure_model()
    assert "forward" in vars(system.generator)  # the instance's forward is now the compiled one
    for wrong in ("generatr", "generator.fwd", "generator.conv1.weight"):
        with pytest.raises(ValueError, match=f"has no submodule or method '{wrong}'"):
            STISRSystem(SRCNN(in_channels=4), compile_targets=[wrong])


class _ChannelMeans(torch.nn.Module):
    """A stand-in for the Inception network: 3-d features whose Frechet distance is computable by hand."""

    def forward(self, images):
        return images.mean(dim=(2, 3))


def test_inception_fid_is_reported_per_set_and_never_averaged(tiny_textzoom, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # no Inception weights: "not available"
    system = STISRSystem(Bicubic(), recognizers={"brightness": BrightnessRecognizer()}, inception_fid=True)
    quiet_trainer().test(system, datamodule=datamodule(tiny_textzoom))
    results = system.test_report.results
    assert math.isnan(results["test/tiny/easy/fid"]) and math.isnan(results["test/tiny/medium/fid"])
    assert "test/tiny/average/fid" not in results

    monkeypatch.setattr("stisr_lightning.metrics.evaluation.cached_inception_pool3", _ChannelMeans)
    system = STISRSystem(Bicubic(), recognizers={"brightness": BrightnessRecognizer()}, inception_fid=True)
    quiet_trainer().test(system, datamodule=datamodule(tiny_textzoom))
    results = system.test_report.results
    # uniform images: zero covariances, so FID = |mu_sr - mu_hr|^2 over 3 channels
    assert results["test/tiny/easy/fid"] == pytest.approx(3 * ((HR_GRAY - LR_GRAY) / 255) ** 2, abs=1e-6)
    dark_gap = round(HR_GRAY * 0.2) - round(LR_GRAY * 0.2)
    assert results["test/tiny/medium/fid"] == pytest.approx(3 * (dark_gap / 255) ** 2, abs=1e-6)
    assert "test/tiny/average/fid" not in results and "test/tiny/average/psnr" in results


def test_bench_keeps_only_the_recognizers_that_the_training_step_reads(tmp_path):
    """`stisr-bench train` drops evaluation-only readers but keeps those the system's step reads (named by the
    system class's `training_recognizer_args`: here a fine-tuned reader)."""
    import yaml

    from stisr_lightning.cli.bench import _build_trainable

    config = yaml.safe_load((REPO / "experiments" / "tsrn.yaml").read_text())
    config["model"]["init_args"]["fine_tune_recognizers"] = ["easyocr-crnn"]
    config["data"] = str(REPO / "experiments" / "_base" / "data_synthetic.yaml")
    (tmp_path / "tsrn_fine_tuning_a_reader.yaml").write_text(yaml.safe_dump(config))
    system, optimizers = _build_trainable(tmp_path / "tsrn_fine_tuning_a_reader.yaml", "cpu", None, "default")
    assert list(system.recognizers) == ["easyocr-crnn"] and system.val_recognizer is None
    fine_tuned = {id(p) for p in system.recognizers["easyocr-crnn"].parameters()}
    assert fine_tuned <= {id(p) for group in optimizers[0].param_groups for p in group["params"]}
