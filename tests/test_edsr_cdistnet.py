"""EDSR (CAR's layout, TBSRN's STN in front) and stage 2 of the EDSR + CDistNet paper: fine-tuning the recognizer
behind a frozen SR model, then post-training quantization of the pipeline and its theoretical size."""

import os

import pytest
import torch
from lightning.pytorch import Trainer

from stisr_lightning.data.datamodule import STISRDataModule
from stisr_lightning.models.generators.edsr import EDSR, RGB_MEAN
from stisr_lightning.models.recognizers.cdistnet import CDistNet
from stisr_lightning.quant.apply import QuantizationSpec
from stisr_lightning.systems.base import STISRSystem
from stisr_lightning.systems.ocr_finetune import OCRFineTuneSystem

os.environ["WANDB_MODE"] = "disabled"
TINY_EDSR = {"num_blocks": 2, "channels": 16}
TINY_CDISTNET = {"d_model": 32, "num_heads": 4, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn": 64,
                 "decoder_ffn": 64, "beam_width": 1, "max_len": 6}


def test_edsr_has_cars_parameters_and_doubles_the_size():
    edsr = EDSR(use_stn=False)
    # head 3->256, 32 x (two 256->256 convs), body conv, x2 upsampler 256->1024, tail 256->3, two fixed mean shifts
    expected = (3 * 256 * 9 + 256) + 32 * 2 * (256 * 256 * 9 + 256) + (256 * 256 * 9 + 256) \
        + (256 * 1024 * 9 + 1024) + (256 * 3 * 9 + 3) + 2 * (9 + 3)
    assert sum(p.numel() for p in edsr.parameters()) == expected == 40_729_627
    assert sum(p.numel() for p in edsr.parameters() if p.requires_grad) == expected - 24  # mean shifts are fixed
    small = EDSR(**TINY_EDSR)
    assert small(torch.rand(2, 3, 16, 64)).shape == (2, 3, 32, 128)
    assert EDSR(scale_factor=4, use_stn=False, **TINY_EDSR)(torch.rand(1, 3, 8, 32)).shape == (1, 3, 32, 128)
    with pytest.raises(ValueError, match="edsr: in_channels must be 3"):
        EDSR(in_channels=4)


def test_mean_shift_subtracts_the_div2k_mean_at_the_weights_pixel_range():
    for rgb_range in (1.0, 255.0):
        edsr = EDSR(rgb_range=rgb_range, **TINY_EDSR)
        x = torch.rand(1, 3, 4, 4)
        expected = x * rgb_range - rgb_range * torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
        torch.testing.assert_close(edsr.sub_mean(x * rgb_range), expected)


def test_the_stn_rectifies_training_inputs_only():
    torch.manual_seed(0)
    edsr = EDSR(**TINY_EDSR)
    plain = EDSR(use_stn=False, **TINY_EDSR)
    plain.load_state_dict({k: v for k, v in edsr.state_dict().items() if not k.startswith(("tps.", "stn_head."))})
    lr = torch.rand(2, 3, 16, 64)
    torch.testing.assert_close(edsr.eval()(lr), plain.eval()(lr))
    with torch.no_grad():
        edsr.stn_head.stn_fc2.bias.add_(0.05)  # move the control points: training inputs are now warped
    assert not torch.allclose(edsr.train()(lr), plain.train()(lr))


def test_cars_usn_file_loads_into_edsr_and_the_stn_keeps_its_identity_start(tmp_path):
    torch.manual_seed(1)
    official = EDSR(use_stn=False, **TINY_EDSR).state_dict()
    for key in ("sub_mean.weight", "head.0.weight", "body.0.body.0.weight", "body.0.body.2.weight", "body.2.weight",
                "tail.0.0.weight", "tail.1.weight", "add_mean.bias"):
        assert key in official  # sunwj/CAR EDSR/edsr.py names
    path = tmp_path / "usn.pth"
    torch.save({f"module.{key}": value for key, value in official.items()}, path)  # saved from nn.DataParallel
    system = STISRSystem(EDSR(**TINY_EDSR), generator_weights=str(path))
    torch.testing.assert_close(system.generator.tail[1].weight, official["tail.1.weight"])
    fresh = EDSR(**TINY_EDSR)
    torch.testing.assert_close(system.generator.stn_head.stn_fc2.bias, fresh.stn_head.stn_fc2.bias)
    torch.save({"head.0.weight": official["head.0.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth: checkpoint does not match EDSR"):
        STISRSystem(EDSR(**TINY_EDSR), generator_weights=str(tmp_path / "partial.pth"))


def _system(**kwargs):
    torch.manual_seed(0)
    return OCRFineTuneSystem(
        generator=EDSR(**TINY_EDSR), recognizers={"cdistnet": CDistNet(**TINY_CDISTNET)},
        fine_tune_recognizers=["cdistnet"], recognizer_lr=1e-3, calibration_images=4, **kwargs
    )


def _trainer(tmp_path, steps=2):
    return Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                   accelerator="cpu", use_distributed_sampler=False)


def _data(root):
    return STISRDataModule([str(root / "train")], {"tiny/easy": str(root / "test" / "easy"),
                                                   "tiny/medium": str(root / "test" / "medium")},
                           val_fraction=0.1, batch_size=2, eval_batch_size=4, num_workers=0)


@pytest.mark.parametrize("train_on", ["sr", "hr"])
def test_stage_two_trains_the_recognizer_behind_the_frozen_generator(train_on, tiny_textzoom, tmp_path):
    system = _system(train_on=train_on)
    generator = {k: v.clone() for k, v in system.generator.state_dict().items()}
    recognizer = {k: v.clone() for k, v in system.recognizers["cdistnet"].state_dict().items()}
    seen = []
    original = system.recognizers["cdistnet"].training_loss
    system.recognizers["cdistnet"].training_loss = lambda images, labels: seen.append(images) or original(images,
                                                                                                            labels)
    trainer = _trainer(tmp_path)
    trainer.fit(system, datamodule=_data(tiny_textzoom))
    assert [k for k, v in system.generator.state_dict().items() if not torch.equal(generator[k], v)] == []
    assert any(not torch.equal(recognizer[k], v) for k, v in system.recognizers["cdistnet"].state_dict().items()
               if v.dtype.is_floating_point)
    assert seen[0].shape == (2, 3, 32, 128)  # SR (16x64 -> 32x128) or HR: the recognizer's input size either way
    assert {"train/loss", "train/loss/cdistnet"} <= set(trainer.logged_metrics)


def test_stage_two_needs_a_recognizer_to_fine_tune():
    with pytest.raises(ValueError, match="fine_tune_recognizers is empty"):
        OCRFineTuneSystem(EDSR(**TINY_EDSR), recognizers={"cdistnet": CDistNet(**TINY_CDISTNET)},
                          fine_tune_recognizers=[])
    with pytest.raises(ValueError, match="train_on must be 'sr' or 'hr', got 'lr'"):
        _system(train_on="lr")


def _size(module):
    return 32 * sum(p.numel() for p in module.parameters())


def test_testing_reports_the_pipelines_theoretical_size_unquantized_and_quantized(tiny_textzoom, tmp_path):
    data = _data(tiny_textzoom)
    plain = _system(subset_average="mean")
    _trainer(tmp_path).test(plain, datamodule=data)
    # the paper's Avg. is the plain mean of the subsets (here 6 easy and 4 medium images)
    psnr = [plain.test_report.results[f"test/tiny/{subset}/psnr"] for subset in ("easy", "medium")]
    assert plain.test_report.results["test/tiny/average/psnr"] == pytest.approx(sum(psnr) / 2)
    full_bits = _size(plain.generator) + _size(plain.recognizers["cdistnet"])
    results = plain.test_report.results
    assert results["test/tiny/easy/model_size_mbit"] == pytest.approx(full_bits / 1e6)
    assert results["test/tiny/average/model_size_mbit"] == pytest.approx(full_bits / 1e6)
    assert "test/tiny/average/quantization_bits" not in results

    quantized = _system(quantize_sr=QuantizationSpec(bits=4, layer_types=("conv",)))
    _trainer(tmp_path).test(quantized, datamodule=data)
    conv_weights = sum(m.weight.numel() for m in quantized.generator.modules() if isinstance(m, torch.nn.Conv2d))
    # every conv weight (mean shifts included) at 4 bits instead of 32; biases and the recognizer stay 32-bit
    expected = full_bits - (32 - 4) * conv_weights
    results = quantized.test_report.results
    assert results["test/tiny/average/model_size_mbit"] * 1e6 == pytest.approx(expected, abs=1)
    assert results["test/tiny/average/quantization_bits"] == 4
    # the quantized generator's SR differs from the float one's, on the same weights
    assert results["test/tiny/average/psnr"] != pytest.approx(plain.test_report.results["test/tiny/average/psnr"], abs=1e-6)


def test_paper_sizes_of_table_two_follow_from_the_architectures():
    """The paper's "Model Size (MB)" are megabits: our EDSR + STN (42.58 M parameters), TBSRN (2.98 M) and CDistNet
    (65.46 M) give its unquantized rows, and every head / body / STN parameter at 4 bits gives its EDSR SR row."""
    edsr, cdistnet = EDSR(), CDistNet()
    from stisr_lightning.models.generators.tbsrn import TBSRN
    from stisr_lightning.quant.apply import quantize_model, theoretical_size_bits

    def mbit(*models):
        return sum(theoretical_size_bits(model, {}) for model in models) / 1e6

    assert round(mbit(TBSRN(in_channels=3), cdistnet), 1) == 2190.1  # paper 2190.08
    assert round(mbit(edsr, cdistnet), 2) == 3457.40
    spec = QuantizationSpec(bits=4, layer_types=("conv", "linear", "norm"), include=("head.*", "body.*", "stn_head.*"),
                            all_parameters=True, quantize_activations=False)
    report = quantize_model(edsr, spec)
    assert round((report.size_bits + theoretical_size_bits(cdistnet, {})) / 1e6, 2) == 2331.32


def test_two_process_ddp_fine_tunes_cdistnet_and_tests_it_quantized(tiny_textzoom, tmp_path):
    """Plain DDP (no unused-parameter search): CDistNet's never-called official parameters are frozen, and every
    rank quantizes identically from the same calibration images."""
    import json

    from fakes import run_command, tiny_run_args

    tiny_cdistnet = (f"--model.init_args.recognizers.cdistnet.init_args.{key}={value}"
                     for key, value in TINY_CDISTNET.items())
    result = run_command("stisr_lightning.cli.train", "fit", "--config", "experiments/edsr_cdistnet.yaml",
                         *tiny_run_args(
                             tiny_textzoom, tmp_path, "--data.batch_size=2", "--trainer.max_steps=2",
                             "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
                             "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
                             "--model.init_args.generator.init_args.num_blocks=1",
                             "--model.init_args.generator.init_args.channels=8",
                             "--model.init_args.calibration_images=4", "--model.init_args.quantize_sr={bits: 4}",
                             *tiny_cdistnet))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["world_size"] == 2 and record["global_step"] == 2
    assert record["metrics"]["test/tiny/easy/quantization_bits"] == 4
    assert 0 < record["metrics"]["test/tiny/easy/model_size_mbit"]


def test_bench_builds_the_pipelines_reader_greedy_and_with_the_official_beam():
    from stisr_lightning.models.recognizers.catalog import build_reader

    assert [build_reader(name).beam_width for name in ("cdistnet", "cdistnet-beam10")] == [1, 10]

