from functools import partial

import torch

from stisr_lightning.cli.train import STISRCLI
from stisr_lightning.models.recognizers.crnn import CRNN
from stisr_lightning.models.recognizers.base import encode_labels
from stisr_lightning.systems.optim import InverseSqrtLR
from stisr_lightning.systems.recognizer import RecognizerSystem


def test_encode_labels_drops_characters_outside_the_charset():
    targets, lengths = encode_labels(["Ab-1", ""], "ab1", lowercase=True)
    assert targets.tolist() == [1, 2, 3]
    assert lengths.tolist() == [3, 0]


def test_ctc_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    system = RecognizerSystem(CRNN(charset="ab", hidden_size=32), use_lr_images=False)
    batch = {"hr": torch.cat([torch.full((4, 3, 32, 128), 0.9), torch.full((4, 3, 32, 128), 0.18)]),
             "label": ["a"] * 4 + ["b"] * 4}
    optimizer = torch.optim.Adam(system.parameters(), lr=1e-3)
    system.log = lambda *args, **kwargs: None  # no trainer attached
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = system.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_crnn_recipe_saves_weights_in_the_official_layout(tiny_textzoom, tmp_path):
    STISRCLI(args=[
        "fit", "--config", "experiments/recognizers/crnn_synth.yaml",
        f"--data.train_dirs=[{tiny_textzoom / 'train'}]", "--data.test_sets={}", "--data.num_workers=0",
        "--data.batch_size=4", "--data.val_fraction=0.25", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ])
    crnn = CRNN.from_official_checkpoint(tmp_path / "crnn.pth")
    saved = torch.load(tmp_path / "crnn.pth", weights_only=True)
    assert list(saved) == list(crnn.state_dict())


def test_aster_teacher_forced_loss_decreases_and_its_recipe_saves_loadable_weights(tiny_textzoom, tmp_path):
    from stisr_lightning.models.recognizers.aster import ASTER

    torch.manual_seed(0)
    aster = ASTER(beam_width=1, max_len=4)
    images = torch.cat([torch.full((2, 3, 32, 128), 0.9), torch.full((2, 3, 32, 128), 0.18)])
    optimizer = torch.optim.Adam(aster.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = aster.training_loss(images, ["a", "a", "b", "b"])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    STISRCLI(args=[
        "fit", "--config", "experiments/recognizers/aster_synth.yaml",
        f"--data.train_dirs=[{tiny_textzoom / 'train'}]", "--data.test_sets={}", "--data.num_workers=0",
        "--data.batch_size=4", "--data.val_fraction=0.25", "--trainer.max_steps=1", "--trainer.val_check_interval=1",
        "--model.init_args.recognizer.init_args.max_len=4",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ])
    ASTER().load_state_dict(torch.load(tmp_path / "aster.pth", weights_only=True))


def test_inverse_sqrt_schedule_is_cdistnets_scheduled_optim():
    import pytest

    system = RecognizerSystem(CRNN(charset="ab", hidden_size=32),
                              optimizer=partial(torch.optim.Adam, lr=512**-0.5, betas=(0.9, 0.98), eps=1e-9),
                              lr_scheduler=partial(InverseSqrtLR, warmup_steps=4))
    config = system.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-9
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # ScheduledOptim at its k-th update: 512^-0.5 * min(k^-0.5, k * 4^-1.5), rising to the peak at k = 4
    expected = [512**-0.5 * min(k**-0.5, k * 4**-1.5) for k in range(1, 9)]
    assert seen == pytest.approx(expected)
    assert max(seen) == pytest.approx(512**-0.5 / 2) and seen.index(max(seen)) == 3
    with pytest.raises(ValueError, match="warmup_steps must be >= 1, got 0"):
        InverseSqrtLR(optimizer, warmup_steps=0)


def test_easyocr_columns_recipe_saves_the_weights_of_each_listed_step(tiny_textzoom, tmp_path):
    from stisr_lightning.models.recognizers.easyocr_crnn import EasyOCRCRNN

    STISRCLI(args=[
        "fit", "--config", "experiments/recognizers/easyocr_columns.yaml",
        f"--data.train_dirs=[{tiny_textzoom / 'train'}]", "--data.num_workers=0", "--data.batch_size=2",
        "--data.val_fraction=0.25", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
        "--model.init_args.save_weights_at=[1, 2]", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ])
    saved = sorted(path.name for path in tmp_path.glob("*.pth"))
    assert saved == ["easyocr.pth", "easyocr_step1.pth", "easyocr_step2.pth"]
    first, second = (torch.load(tmp_path / f"easyocr_step{k}.pth", weights_only=True) for k in (1, 2))
    assert not torch.equal(first["Prediction.weight"], second["Prediction.weight"])  # one optimizer step apart
    EasyOCRCRNN(checkpoint=tmp_path / "easyocr.pth")  # loads strictly
