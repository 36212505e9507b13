"""TextResShift (Pan et al., "Boosting Diffusion-Based Text Image Super-Resolution Model Towards Generalized
Real-World Scenarios", ICCVW 2025; papers/text_resshift_progressive_diffusion.txt): ResShift's residual-shifting
diffusion in an autoencoder's latent space, whose Swin-UNet also cross-attends to the text an OCR reads from the LR
image, each character's feature scaled by the OCR's confidence in it (Eq. 3-4).

What the paper leaves open, and what is taken here:
- Schedule: ResShift's journal / x2 configuration (T = 4, kappa 2, min noise 0.2, sqrt(eta_T) 0.99, p 0.3), the
  configuration of the denoiser it reuses; the paper gives no T. `num_inference_steps` may sub-sample it.
- Text (`text_update`): the paper's Algorithm 2 updates the tokens every step with DiffTSR's frozen text-diffusion
  model (TDM: a 12-layer multinomial-diffusion transformer reading image features that MoM's own UNet makes from
  DiffTSR's KL-VAE latents, a latent space this model does not have). The TDM is not built. `fixed` (default): the
  OCR's reading of the LR image conditions every step, DiffTSR's default inference (`general=True`, which skips the
  TDM). `reread`: a suite option in the TDM's place, not the paper's: before each later step the OCR reads the
  decoded z0 estimate of the step before, so the text follows the image as it sharpens.
- LR conditioning: ResShift concatenates the LR image to the latent (`lq`); an LR smaller than the latent (pixel
  space, or a factor below the autoencoder's) is bicubic-resized to the denoiser's `lq` size first.
- Images are [0, 1] at the interface (the suite's convention) and [-1, 1] inside (ResShift's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stisr_lightning.diffusion.resshift import ResShiftScheduler, sample
from stisr_lightning.models.autoencoders.vq_f4 import IdentityAutoencoder, VQModelTorch, load_official_vq_f4
from stisr_lightning.models.blocks.text_condition import MoMTextTransformer, load_difftsr_mom_transformer
from stisr_lightning.models.generators.resshift_unet import UNetModelSwin
from stisr_lightning.models.recognizers.base import TorchRecognizer
from stisr_lightning.models.recognizers.transocr import TransOCR, load_alphabet, load_official_transocr
from stisr_lightning.weights import extract_state_dict, load_weights, read_checkpoint, report_untrained


TEXT_UPDATES = ("fixed", "reread")


class TextResShift(nn.Module):
    """Args:
    denoiser: ResShift's `UNetModelSwin` predicting z0; with `context_dim` set it cross-attends to the text
        (Table 2's "w/o cross-attention" row: `context_dim: null` and no `text_encoder`).
    autoencoder: frozen; VQ-f4 (`VQModelTorch`, the paper) or `IdentityAutoencoder` (pixel space; the CPU default).
    reader: the frozen OCR whose tokens and confidences condition the denoiser (TransOCR in the paper).
    text_encoder: DiffTSR's MoM text transformer, turning tokens into the cross-attention context.
    text_encoder_charset: the text encoder's own characters in token order (a string, or an alphabet file such as
        `official:difftsr_alphabet.txt`): the reader's characters are mapped to them by character, DiffTSR's way
        (token = index in the alphabet; padding and characters it lacks = its length, 6735 for DiffTSR). None: the
        encoder reads the reader's classes as they are (token = charset index + 1, 0 = none).
    text_encoder_trainable: train the text encoder with the denoiser. The paper loads DiffTSR's MoM and freezes it
        (default); without those weights (any English setting) a frozen random encoder would say nothing, so
        English presets train it.
    confidence: scale each token's feature by its confidence (False = Table 2's "w/o confidence score").
    text_update: how the text condition evolves over the sampling chain: `fixed` (read from LR once) or `reread`
        (re-read from each step's decoded estimate); see the module docstring. Training is the same for both.
    scale_factor: HR / LR size ratio of the data.
    max_text_length: tokens read per image (DiffTSR / TransOCR: 24).
    num_train_timesteps, kappa, min_noise_level, etas_end, power: the ResShift schedule (see ResShiftScheduler).
    num_inference_steps: sampling steps (None = every training step).
    denoiser_weights: a released ResShift UNet (`official:resshift_realsrx4_s4_v3.pth`: the SR prior the paper starts
        from; the cross-attention layers keep their fresh initialisation) or None (random).
    autoencoder_weights: `official:autoencoder_vq_f4.pth` for a VQModelTorch (required: a random frozen autoencoder
        is an error under strict weights, a warning otherwise).
    reader_weights: the OCR's file (`official:transocr.pth`) unless it ships its weights (EasyOCR).
    text_encoder_weights: DiffTSR's checkpoint (`official:DiffTSR.ckpt`) for the MoM text transformer; a frozen text
        encoder without it is an error under strict weights, a warning otherwise.
    """

    def __init__(
        self,
        denoiser: UNetModelSwin,
        autoencoder: nn.Module | None = None,
        reader: TorchRecognizer | None = None,
        text_encoder: MoMTextTransformer | None = None,
        text_encoder_charset: str | None = None,
        text_encoder_trainable: bool = False,
        confidence: bool = True,
        text_update: str = "fixed",
        scale_factor: int = 2,
        max_text_length: int = 24,
        num_train_timesteps: int = 4,
        kappa: float = 2.0,
        min_noise_level: float = 0.2,
        etas_end: float = 0.99,
        power: float = 0.3,
        num_inference_steps: int | None = None,
        denoiser_weights: str | None = None,
        autoencoder_weights: str | None = None,
        reader_weights: str | None = None,
        text_encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        if text_update not in TEXT_UPDATES:
            raise ValueError(f"TextResShift: text_update {text_update!r} is not one of {', '.join(TEXT_UPDATES)}")
        self.cross_attention = denoiser.context_dim is not None
        if text_update == "reread" and not self.cross_attention:
            raise ValueError("TextResShift: text_update 'reread' needs the text condition, but the denoiser has no "
                             "cross-attention (context_dim: null)")
        if self.cross_attention and (reader is None or text_encoder is None):
            raise ValueError("TextResShift: the denoiser cross-attends to text (context_dim set) but reader or "
                             "text_encoder is missing; give both, or set denoiser context_dim: null")
        if not self.cross_attention and (reader is not None or text_encoder is not None):
            raise ValueError("TextResShift: reader / text_encoder given but the denoiser has no cross-attention "
                             "(context_dim: null); drop them for the 'w/o cross-attention' row")
        if self.cross_attention:
            if text_encoder.dim != denoiser.context_dim:
                raise ValueError(f"TextResShift: text_encoder dim {text_encoder.dim} != denoiser context_dim "
                                 f"{denoiser.context_dim}")
            token_map = _token_map(reader.charset, text_encoder_charset)
            if text_encoder.vocab_size <= int(token_map.max()):
                raise ValueError(f"TextResShift: text_encoder vocab_size {text_encoder.vocab_size} has no token "
                                 f"{int(token_map.max())} (the reader's classes through text_encoder_charset)")
            self.register_buffer("token_map", token_map, persistent=False)
            if text_encoder.max_seq_len < max_text_length:
                raise ValueError(f"TextResShift: text_encoder max_seq_len {text_encoder.max_seq_len} < "
                                 f"max_text_length {max_text_length}")
        _load_parts(denoiser, autoencoder, reader, text_encoder, text_encoder_trainable,
                    denoiser_weights, autoencoder_weights, reader_weights, text_encoder_weights)
        self.denoiser = denoiser
        self.autoencoder = (autoencoder or IdentityAutoencoder()).requires_grad_(False).eval()
        self.autoencoder.frozen = True  # from its official file: kept out of checkpoints (STISRSystem)
        self.reader = reader.freeze() if reader is not None else None
        self.text_encoder = text_encoder
        self.text_encoder_trainable = text_encoder_trainable
        if text_encoder is not None and not text_encoder_trainable:
            text_encoder.requires_grad_(False).eval()
            text_encoder.frozen = True
        self.confidence = confidence
        self.text_update = text_update
        self.scale_factor = scale_factor
        self.max_text_length = max_text_length
        self.scheduler = ResShiftScheduler(num_train_timesteps, kappa, min_noise_level, etas_end, power)
        self.num_inference_steps = num_inference_steps or num_train_timesteps
        self.scheduler.set_timesteps(self.num_inference_steps)  # validates the step count

    def train(self, mode: bool = True) -> TextResShift:
        """The frozen parts (autoencoder, reader, a frozen text encoder) stay in eval mode."""
        super().train(mode)
        frozen = [self.autoencoder, self.reader] + ([] if self.text_encoder_trainable else [self.text_encoder])
        for module in frozen:
            if module is not None:
                module.eval()
        return self

    # ------------------------------------------------------------------------------------------ conditions
    def text_context(self, images: Tensor) -> Tensor | None:
        """The cross-attention context of a batch (the LR images, or a decoded estimate): the reader's tokens (times
        their confidences) encoded."""
        if not self.cross_attention:
            return None
        with torch.no_grad():
            tokens, confidences = self.reader.read_tokens(images[:, :3], self.max_text_length)
            tokens = self.token_map[tokens]
        return self.text_encoder(tokens, confidences if self.confidence else None)

    def encode(self, images: Tensor) -> Tensor:
        """[0, 1] images -> latents (frozen encoder, no gradient)."""
        with torch.no_grad():
            return self.autoencoder.encode(images[:, :3] * 2 - 1)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> [0, 1] images; differentiable (the paper's losses are on the decoded image)."""
        return (self.autoencoder.decode(latents) + 1) / 2

    def conditions(self, lr: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(z_y, lq, context): the LR image upsampled to the HR size and encoded (the chain's end point), the LR
        image at the denoiser's `lq` size in [-1, 1], and the text context."""
        rgb = lr[:, :3]
        upsampled = F.interpolate(rgb, scale_factor=self.scale_factor, mode="bicubic", align_corners=False)
        z_y = self.encode(upsampled)
        lq_size = tuple(side * self.denoiser.lq_scale for side in z_y.shape[-2:])
        lq = rgb if tuple(rgb.shape[-2:]) == lq_size else F.interpolate(rgb, size=lq_size, mode="bicubic",
                                                                          align_corners=False)
        return z_y, lq * 2 - 1, self.text_context(lr)

    # ------------------------------------------------------------------------------------------ training
    def training_prediction(self, lr: Tensor, hr: Tensor, timesteps: Tensor, noise: Tensor | None = None) -> dict:
        """One training step's forward (Algorithm 1): z_t from q(z_t | z0, z_y), the denoiser's z0 estimate and its
        decoded image. Returns {"z0", "z0_pred", "sr"} ("sr" in [0, 1], differentiable)."""
        z_y, lq, context = self.conditions(lr)
        z0 = self.encode(hr)
        noise = torch.randn_like(z0) if noise is None else noise
        z_t = self.scheduler.add_noise(z0, z_y, noise, timesteps)
        z0_pred = self.denoiser(self.scheduler.scale_input(z_t, timesteps), timesteps, lq=lq, context=context)
        return {"z0": z0, "z0_pred": z0_pred, "sr": self.decode(z0_pred)}

    # ------------------------------------------------------------------------------------------ sampling
    def forward(self, lr: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Algorithm 2: the reverse chain from z_y + kappa sqrt(eta_T) noise, decoded; [0, 1] RGB. With
        `text_update: reread` each step but the last also re-reads its decoded z0 estimate for the next step."""
        z_y, lq, context = self.conditions(lr)
        scheduler = self.scheduler
        if scheduler.num_inference_steps != self.num_inference_steps or scheduler.timesteps.device != z_y.device:
            scheduler.set_timesteps(self.num_inference_steps, z_y.device)
        steps_left = self.num_inference_steps

        def predict(z_t: Tensor, t: Tensor) -> Tensor:
            nonlocal context, steps_left
            z0 = self.denoiser(z_t, t.expand(z_t.shape[0]), lq=lq, context=context)
            steps_left -= 1
            if self.text_update == "reread" and steps_left > 0:
                context = self.text_context(self.decode(z0).clamp(0, 1))
            return z0

        return self.decode(sample(predict, z_y, self.scheduler, generator=generator)).clamp(0, 1)


def _token_map(reader_charset: str, encoder_charset: str | None) -> Tensor:
    """Reader class (0 = none, k = reader_charset[k - 1]) -> text-encoder token."""
    if encoder_charset is None:
        return torch.arange(len(reader_charset) + 1)
    alphabet = load_alphabet(encoder_charset)
    pad = len(alphabet)
    return torch.tensor([pad] + [alphabet.find(ch) if ch in alphabet else pad for ch in reader_charset])


def _load_parts(denoiser: UNetModelSwin, autoencoder: nn.Module | None, reader: TorchRecognizer | None,
                text_encoder: MoMTextTransformer | None, text_encoder_trainable: bool, denoiser_weights: str | None,
                autoencoder_weights: str | None, reader_weights: str | None, text_encoder_weights: str | None) -> None:
    """Each official file into its part; a frozen part left at its random init is reported (an error under strict
    weights: the `full` preset)."""
    for part, weights, name in ((reader, reader_weights, "reader"), (text_encoder, text_encoder_weights, "text_encoder")):
        if weights and part is None:
            raise ValueError(f"TextResShift: {name}_weights {weights!r} given but {name} is null")
    if denoiser_weights:
        denoiser.load_resshift_state_dict(extract_state_dict(read_checkpoint(denoiser_weights), "denoiser."),
                                          denoiser_weights)
    if autoencoder_weights:
        if not isinstance(autoencoder, VQModelTorch):
            raise ValueError(f"TextResShift: autoencoder_weights {autoencoder_weights!r} given but the autoencoder is "
                             f"{type(autoencoder).__name__}, not VQModelTorch")
        load_official_vq_f4(autoencoder_weights, autoencoder)
    elif isinstance(autoencoder, VQModelTorch):
        report_untrained("TextResShift: the VQ-f4 autoencoder has no autoencoder_weights, so it is frozen at random "
                         "weights; give official:autoencoder_vq_f4.pth")
    if reader_weights:
        if isinstance(reader, TransOCR):
            load_official_transocr(reader_weights, model=reader)
        else:
            load_weights(reader, reader_weights, lightning_prefix="recognizer.")
    elif reader is not None and not reader.ships_weights:
        report_untrained(f"TextResShift: the OCR ({type(reader).__name__}) has no reader_weights, so it reads with "
                         "random weights; give official:transocr.pth")
    if text_encoder_weights:
        load_difftsr_mom_transformer(text_encoder_weights, freeze=not text_encoder_trainable, model=text_encoder)
    elif text_encoder is not None and not text_encoder_trainable:
        report_untrained("TextResShift: the frozen MoM text encoder has no text_encoder_weights; give "
                         "official:DiffTSR.ckpt or set text_encoder_trainable: true")
