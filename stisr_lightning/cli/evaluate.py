"""`stisr-eval`: test a system on its configured test sets and print the recognizer x subset table.

    stisr-eval --config experiments/bicubic.yaml
    stisr-eval --config experiments/tsrn.yaml --ckpt_path runs/tsrn/checkpoints/best.ckpt
    stisr-eval --config experiments/tsrn.yaml --weights TSRN_model_best.pth      # an official checkpoint

It is `stisr-train test` with the same options; results.json goes to `--trainer.default_root_dir`.
"""

import sys

from stisr_lightning.cli.train import STISRCLI


def main(args: list[str] | None = None) -> None:
    STISRCLI(args=["test", *(sys.argv[1:] if args is None else args)])


if __name__ == "__main__":
    main()
