"""The suite's VQ-f4 recipe: codebook loss by hand, training lowers the reconstruction error, and a trained run's
checkpoint is what TextResShift's `autoencoder_weights` loads."""

from functools import partial
from pathlib import Path

import pytest
import torch

from stisr_lightning.models.autoencoders.vq_f4 import VectorQuantizer, VQModelTorch
from stisr_lightning.systems.autoencoder import AutoencoderSystem

REPO = Path(__file__).resolve().parents[1]
SMALL = {"ch": 32, "ch_mult": (1, 2, 4), "num_res_blocks": 1, "n_embed": 16}


def test_codebook_loss_moves_codes_to_latents_and_commits_latents_to_codes():
    quantizer = VectorQuantizer(2, 1)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor([[0.0], [1.0]]))
    z = torch.tensor([0.2, 0.9]).view(1, 1, 1, 2)  # nearest codes 0 and 1: squared errors 0.04 and 0.01
    assert quantizer.codebook_loss(z, beta=0.25).item() == pytest.approx((1 + 0.25) * (0.04 + 0.01) / 2)


def test_training_lowers_the_reconstruction_error():
    torch.manual_seed(0)
    system = AutoencoderSystem(VQModelTorch(**SMALL), optimizer=partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.9)))
    images = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 32, 128), 5, 1, 2)
    optimizer = system.configure_optimizers()
    errors = []
    for _ in range(30):
        optimizer.zero_grad()
        reconstruction, latent = system.reconstruct(images)
        loss = (reconstruction - images).abs().mean() + system.autoencoder.quantize.codebook_loss(latent)
        loss.backward()
        optimizer.step()
        errors.append((reconstruction - images).abs().mean().item())
    assert errors[-1] < 0.5 * errors[0]


def test_a_trained_run_loads_into_text_resshift_through_the_addon(tiny_textzoom, tmp_path):
    from stisr_lightning.cli.train import STISRCLI

    run = tmp_path / "vq"
    small = "{ch: 32, ch_mult: [1, 2, 4], num_res_blocks: 1, n_embed: 16}"
    STISRCLI(args=["fit", "--config", str(REPO / "experiments" / "autoencoders" / "vq_f4_synthetic.yaml"),
                   f"--model.init_args.autoencoder.init_args={small}", f"--data.train_dirs=[{tiny_textzoom / 'train'}]",
                   "--data.num_workers=0", "--data.batch_size=4", "--data.val_fraction=0.25", "--trainer.max_steps=2",
                   "--trainer.val_check_interval=2", "--trainer.logger=false", f"--trainer.default_root_dir={run}"])
    checkpoint = run / "checkpoints" / "best.ckpt"
    trained = torch.load(checkpoint, weights_only=False)["state_dict"]
    cli = STISRCLI(args=["--config", str(REPO / "experiments" / "text_resshift.yaml"),
                         "--config", str(REPO / "experiments" / "addons" / "text_resshift_vq_f4_synthetic.yaml"),
                         f"--model.init_args.generator.init_args.autoencoder.init_args={small}",
                         f"--model.init_args.generator.init_args.autoencoder_weights={checkpoint}",
                         "--model.init_args.generator.init_args.denoiser.init_args.model_channels=32",
                         f"--trainer.default_root_dir={tmp_path / 'trs'}", "--trainer.logger=false"], run=False)
    autoencoder = cli.model.generator.autoencoder
    assert torch.equal(autoencoder.quantize.embedding.weight, trained["autoencoder.quantize.embedding.weight"])
    z_y, lq, _ = cli.model.generator.conditions(torch.rand(1, 3, 16, 64))  # the x2 LR of the embedded default
    assert z_y.shape == (1, 3, 8, 32) and lq.shape == (1, 3, 16, 64)  # HR 32x128 -> latent 8x32; LR at twice it
    with torch.no_grad():
        assert cli.model.generator(torch.rand(1, 3, 16, 64)).shape == (1, 3, 32, 128)
