import pytest
import torch

from stisr_lightning.models.generators.tbsrn import TBSRN
from stisr_lightning.models.generators.tsrn import TSRN
from stisr_lightning.weights import load_weights


def test_official_keys_of_unused_modules_are_dropped_by_name_and_the_rest_loads_strictly(tmp_path):
    source = TBSRN(num_blocks=1, use_stn=False)
    state = {**source.state_dict(), "conv.weight": torch.zeros(3, 3, 3, 3), "block2.gru1.conv1.weight": torch.zeros(1)}
    torch.save({"state_dict_G": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "tbsrn.pth")
    target = TBSRN(num_blocks=1, use_stn=False)
    with pytest.warns(UserWarning, match=r"ignoring 2 keys of modules TBSRN never calls \(block2\.gru1, conv\)"):
        load_weights(target, tmp_path / "tbsrn.pth")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_a_generator_without_unused_official_keys_rejects_extra_keys(tmp_path):
    state = {**TSRN(num_blocks=1, use_stn=False).state_dict(), "conv.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "tsrn.pth")
    with pytest.raises(ValueError, match=r"tsrn.pth: checkpoint does not match TSRN .*unexpected 1: \[conv.weight\]"):
        load_weights(TSRN(num_blocks=1, use_stn=False), tmp_path / "tsrn.pth")


def test_tatt_official_generator_file_loads_with_its_separately_released_student(tmp_path):
    from stisr_lightning.models.generators.tatt import TATT

    released = TATT(num_blocks=1, use_stn=False)
    generator_only = {k: v for k, v in released.state_dict().items() if not k.startswith("tpg.")}
    torch.save({"state_dict_G": generator_only}, tmp_path / "model_best_acc_0.pth")
    torch.save(released.tpg.crnn.state_dict(), tmp_path / "recognizer_best_acc_0.pth")

    loaded = TATT(num_blocks=1, use_stn=False, tpg_weights=str(tmp_path / "recognizer_best_acc_0.pth"))
    load_weights(loaded, tmp_path / "model_best_acc_0.pth")
    assert all(torch.equal(a, b) for a, b in zip(released.state_dict().values(), loaded.state_dict().values()))
    with pytest.warns(UserWarning, match=r"model_best_acc_0.pth: holds no weights for tpg"):
        load_weights(TATT(num_blocks=1, use_stn=False), tmp_path / "model_best_acc_0.pth")


def test_build_system_replaces_the_named_init_args_and_keeps_the_rest():
    from pathlib import Path

    from stisr_lightning.systems.loading import build_system

    config = Path(__file__).parents[1] / "experiments" / "tsrn.yaml"
    configured = build_system(config)
    trimmed = build_system(config, {"recognizers": {}, "recognizer_lr": 5e-4})
    assert sorted(configured.recognizers) == ["easyocr-crnn", "easyocr-moran", "ppocr"]
    assert len(trimmed.recognizers) == 0 and trimmed.recognizer_lr == 5e-4
    assert type(trimmed.generator) is type(configured.generator)


def test_export_fp16_halves_a_checkpoint_and_loads_back_as_fp32(tmp_path):
    from stisr_lightning.weights import export_fp16, load_weights

    module = torch.nn.Conv2d(3, 4, 3)
    torch.save({"state_dict": {f"generator.{k}": v for k, v in module.state_dict().items()}}, tmp_path / "run.ckpt")
    out = export_fp16(tmp_path / "run.ckpt", tmp_path / "weights.pt")
    assert {v.dtype for v in torch.load(out).values()} == {torch.float16}
    with pytest.raises(FileExistsError, match="weights.pt: already exists"):
        export_fp16(tmp_path / "run.ckpt", out)
    copy = torch.nn.Conv2d(3, 4, 3)
    load_weights(copy, out)
    assert copy.weight.dtype == torch.float32
    assert torch.equal(copy.weight, module.weight.half().float())


def test_unknown_shipped_weights_are_a_one_line_error():
    from stisr_lightning.weights import read_checkpoint

    with pytest.raises(FileNotFoundError, match=r"shipped:nothing: no shipped weights nothing.pt \(shipped: "):
        read_checkpoint("shipped:nothing")
