"""Loading weights: the suite's own Lightning checkpoints, official STISR checkpoint containers, run directories."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SHIPPED_PREFIX = "shipped:"
SHIPPED_GENERATORS = Path(__file__).resolve().parent / "models" / "generators" / "weights"
"""Generator weights the suite trained itself and ships in the package, named `shipped:<name>` in configs
(`shipped:tsrn_synthetic` is `models/generators/weights/tsrn_synthetic.pt`; its recipe is beside it)."""


OFFICIAL_PREFIX = "official:"
WEIGHTS_DIR_ENV = "STISR_WEIGHTS"
"""Official files are named `official:<file>` in configs and live in one folder: $STISR_WEIGHTS, else ./weights."""
STRICT_WEIGHTS_ENV = "STISR_STRICT_WEIGHTS"
"""When "1", a helper network or reader without its weights file is an error instead of a warning (full presets)."""
OFFICIAL_FILES = Path(__file__).resolve().parent / "official_files.csv"


@dataclass(frozen=True)
class OfficialFile:
    file: str
    what: str
    source: str
    needed_by: str


def official_files() -> list[OfficialFile]:
    """The official files the suite knows by name (official_files.csv): what each is, where it comes from, and
    which tables need it."""
    with OFFICIAL_FILES.open(newline="") as handle:
        return [OfficialFile(**row) for row in csv.DictReader(handle)]


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or "weights")


def official_path(reference: str) -> Path:
    """The file an `official:<file>` reference names, in the weights directory (not checked for existence)."""
    return weights_dir() / reference[len(OFFICIAL_PREFIX):]


def official_references(config: Any) -> Iterator[str]:
    """Every `official:<file>` string inside a (nested) config, in order of appearance."""
    if isinstance(config, str) and config.startswith(OFFICIAL_PREFIX):
        yield config
    elif isinstance(config, dict):
        for value in config.values():
            yield from official_references(value)
    elif isinstance(config, (list, tuple)):
        for value in config:
            yield from official_references(value)


def missing_official_message(reference: str) -> str:
    return (f"{reference}: {official_path(reference)} not found (put the official file there or set {WEIGHTS_DIR_ENV} "
            f"to the folder that holds it; `stisr-data weights check` lists every expected file)")


def file_digest(path: Path) -> str:
    """First 12 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def report_untrained(message: str) -> None:
    """A network that should hold trained weights has none (`message` says which and where weights come from): a
    warning, or an error under STISR_STRICT_WEIGHTS=1, so that no full-protocol run trains or reads with it."""
    if os.environ.get(STRICT_WEIGHTS_ENV) == "1":
        raise ValueError(f"{message} ({STRICT_WEIGHTS_ENV}=1: every helper needs its weights file)")
    warnings.warn(message, stacklevel=3)


def strip_prefix(state_dict: dict[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Remove a DataParallel-style prefix from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """The one strict loader: every mismatch (a shape, missing or unexpected keys) is a one-line ValueError that names
    `source`."""
    own = module.state_dict()
    for key, value in state_dict.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, "
                             f"{type(module).__name__} expects {tuple(own[key].shape)}")
    result = module.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:8]) + (" ..." if len(result.missing_keys) > 8 else "")
        unexpected = ", ".join(result.unexpected_keys[:8]) + (" ..." if len(result.unexpected_keys) > 8 else "")
        raise ValueError(
            f"{source}: checkpoint does not match {type(module).__name__} "
            f"(missing {len(result.missing_keys)}: [{missing}]; unexpected {len(result.unexpected_keys)}: [{unexpected}])"
        )


def resolve_weights(path: str | Path) -> Path:
    """A weights path as given, the weights-directory file that `official:<file>` names, or the package file that a
    `shipped:<name>` path names."""
    path = str(path)
    if path.startswith(OFFICIAL_PREFIX):
        resolved = official_path(path)
        if not resolved.is_file():
            raise FileNotFoundError(missing_official_message(path))
        return resolved
    if not path.startswith(SHIPPED_PREFIX):
        return Path(path)
    name = path[len(SHIPPED_PREFIX):]
    shipped = SHIPPED_GENERATORS / f"{name}.pt"
    if not shipped.is_file():
        known = sorted(p.stem for p in SHIPPED_GENERATORS.glob("*.pt"))
        raise FileNotFoundError(f"{path}: no shipped weights {shipped.name} (shipped: {', '.join(known) or 'none'})")
    return shipped


def export_fp16(checkpoint_path: str | Path, out_path: str | Path, lightning_prefix: str = "generator.") -> Path:
    """A suite checkpoint's module weights as a plain fp16 state dict (half the size; fp32 again when loaded)."""
    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f"{out_path}: already exists; remove it first")
    state = extract_state_dict(read_checkpoint(checkpoint_path), lightning_prefix)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, out_path)
    return out_path


def read_checkpoint(path: str | Path) -> Any:
    path = resolve_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - old releases pickle other objects beside the weights (ASTER: numpy scores)
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # full unpickling: trusted files only
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from None


def extract_state_dict(checkpoint: Any, lightning_prefix: str = "generator.") -> dict[str, Tensor]:
    """One module's weights from any container the STISR world uses.

    - the suite's Lightning checkpoints: `state_dict`, keeping the keys under `lightning_prefix` (the module's
      attribute path in the system: `generator.`, `recognizer.`, `recognizers.crnn.`);
    - TextZoom / TATT / LEMMA / TBSRN releases: `{'state_dict_G': ...}`;
    - `{'state_dict': ...}` or `{'model': ...}` wrappers, or a plain state dict;
    each with or without a DataParallel `module.` prefix.
    """
    if isinstance(checkpoint, dict) and "state_dict_G" in checkpoint:
        state = checkpoint["state_dict_G"]
    elif isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state = checkpoint["state_dict"]
        if any(key.startswith(lightning_prefix) for key in state):
            state = {k[len(lightning_prefix):]: v for k, v in state.items() if k.startswith(lightning_prefix)}
    elif isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        state = checkpoint["model"]
    else:
        state = checkpoint
    return strip_prefix(dict(state))


def drop_unused_official_keys(module_type: type, state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Official releases carry weights of modules their forward never calls (TBSRN's GRUs, TATT's decoder
    self-attention, LEMMA's unused encodings); a generator names them in `unused_official_keys` (a regex whose first
    group names the module). They are dropped, with a warning that names them, so everything else loads strictly."""
    pattern = getattr(module_type, "unused_official_keys", None)
    if pattern is None:
        return state
    matches = [match for match in map(re.compile(pattern).fullmatch, state) if match]
    if matches:
        modules = sorted({match.group(1) for match in matches})
        warnings.warn(f"{source}: ignoring {len(matches)} keys of modules {module_type.__name__} never calls "
                      f"({', '.join(modules)})", stacklevel=2)
    unused = {match.group(0) for match in matches}
    return {key: value for key, value in state.items() if key not in unused}


def complete_separately_released(module: nn.Module, state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Some official generator files leave out a part released in another file (TATT's student text-prior CRNN,
    `recognizer_best_acc_0.pth`); a generator names that part in `separately_released_keys` and loads it itself
    (e.g. TATT's `tpg_weights`). A file without any of those keys keeps the module's current values for them, with a
    warning unless the module says it loaded them (`separate_weights_loaded`)."""
    pattern = getattr(module, "separately_released_keys", None)
    if pattern is None or any(re.fullmatch(pattern, key) for key in state):
        return state
    if not getattr(module, "separate_weights_loaded", False):
        warnings.warn(f"{source}: holds no weights for {pattern} (released separately); they keep their current, "
                      f"untrained values", stacklevel=2)
    current = {key: value for key, value in module.state_dict().items() if re.fullmatch(pattern, key)}
    return {**current, **state}


def frozen_loss_recognizer(recognizer: Any, path: str | None, owner: str, hint: str) -> Any:
    """A recognizer that judges the SR output inside a loss term, loaded from `path` (an official file or one from
    the suite's recipes) and frozen. Without weights it judges with an untrained network, which only checks the
    machinery: the owner warns and says where weights come from (`hint`)."""
    if path is not None:
        load_state_dict_strict(recognizer, extract_state_dict(read_checkpoint(path), "recognizer."), path)
    else:
        report_untrained(f"{owner}: no recognizer_weights, so the recognizer is untrained; {hint}")
    return recognizer.freeze()


def load_weights(module: nn.Module, path: str | Path, lightning_prefix: str = "generator.") -> None:
    state = drop_unused_official_keys(type(module), extract_state_dict(read_checkpoint(path), lightning_prefix), str(path))
    load_state_dict_strict(module, complete_separately_released(module, state, str(path)), str(path))


LPIPS_BACKBONES = ("alex", "vgg", "squeeze")


def lpips_backbone_path(net: str) -> Path:
    """Where torchvision keeps an LPIPS backbone's ImageNet weights (`<torch hub dir>/checkpoints/<file>`)."""
    from torchvision import models

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS: unknown net {net!r}, expected one of {sorted(LPIPS_BACKBONES)}")
    weights = {"alex": models.AlexNet_Weights, "vgg": models.VGG16_Weights, "squeeze": models.SqueezeNet1_1_Weights}
    return Path(torch.hub.get_dir()) / "checkpoints" / weights[net].IMAGENET1K_V1.url.rsplit("/", 1)[-1]


def pretrained_lpips(net: str) -> nn.Module:
    """The `lpips` package's network on its cached ImageNet backbone, frozen; never downloads (FileNotFoundError
    naming the file instead: distances in a random backbone's features mean nothing)."""
    path = lpips_backbone_path(net)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS: no ImageNet {net} weights at {path} (copy the torchvision file there); "
                                "nothing is downloaded")
    import lpips

    with warnings.catch_warnings():  # lpips still calls torchvision with the deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        network = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
    return network.requires_grad_(False).eval()
