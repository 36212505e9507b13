"""`stisr-eval`: test a system on its configured test sets and print the recognizer x subset table.

    stisr-eval --config experiments/bicubic.yaml
    stisr-eval --config experiments/tsrn.yaml --ckpt_path runs/tsrn/checkpoints/best.ckpt
    stisr-eval --config experiments/tsrn.yaml --weights TSRN_model_best.pth      # an official checkpoint
    stisr-eval --config experiments/tsrn.yaml --ckpt_path ... --refine-with runs/REFINER [--refine-steps 5]

It is `stisr-train test` with the same options; results.json goes to `--trainer.default_root_dir`.
`--refine-with RUN_OR_CKPT` cascades a second trained generator that can refine another's output after the configured
one (`models/generators/refined.py`; e.g. a diffusion model's refiner): SR = refiner.refine_output(
generator(lr), lr); both options are recorded in results.json's config.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

from stisr_lightning.cli.parsing import one_line_errors
from stisr_lightning.cli.train import STISRCLI
from stisr_lightning.models.generators.refined import RefinedGenerator, can_refine
from stisr_lightning.systems.loading import load_system
from stisr_lightning.weights import load_state_dict_strict, read_checkpoint

DASHED_OPTIONS = {"--refine-with": "--refine_with", "--refine-steps": "--refine_steps"}


def refiner_checkpoint(run_or_checkpoint: str) -> Path:
    """A checkpoint file as given, or a run directory's checkpoints/best.ckpt (else last.ckpt)."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    for name in ("best.ckpt", "last.ckpt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise FileNotFoundError(f"--refine-with {run_or_checkpoint}: neither a checkpoint nor a run with checkpoints/")


def load_refiner(run_or_checkpoint: str):
    checkpoint = refiner_checkpoint(run_or_checkpoint)
    generator = load_system(checkpoint).generator
    if not can_refine(generator):
        raise ValueError(f"--refine-with {checkpoint}: the run's generator {type(generator).__name__} cannot refine "
                         "another generator's output (no refine_output)")
    return generator


class EvaluateCLI(STISRCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--refine_with", "--refine-with", type=Optional[str], default=None,
                            help="A trained run directory or checkpoint whose generator refines the configured generator's SR.")
        parser.add_argument("--refine_steps", "--refine-steps", type=Optional[int], default=None,
                            help="Sampling steps of the refiner (default: its own num_inference_steps).")

    def before_test(self) -> None:
        super().before_test()
        config = self.config_init[self.subcommand]
        if not config.refine_with:
            return
        if config.ckpt_path:
            # Loaded here, before the generator is wrapped, since the wrapped system's keys no longer match it.
            checkpoint = read_checkpoint(config.ckpt_path)
            self.model.on_load_checkpoint(checkpoint)
            load_state_dict_strict(self.model, checkpoint["state_dict"], str(config.ckpt_path))
            config.ckpt_path = None
        refiner = load_refiner(config.refine_with).to(self.model.device)
        self.model.generator = RefinedGenerator(self.model.generator, refiner, config.refine_steps)


@one_line_errors("stisr-eval")
def main(args: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if args is None else args)
    for dashed, underscored in DASHED_OPTIONS.items():
        args = [underscored + arg[len(dashed):] if arg.split("=")[0] == dashed else arg for arg in args]
    # the arguments are the command line's, rewritten: LightningCLI's warning about getting both does not apply
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    EvaluateCLI(args=["test", *args], prog="stisr-eval")


if __name__ == "__main__":
    main()
