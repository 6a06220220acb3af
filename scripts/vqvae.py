"""Stage 1a: train the VQ-VAE choreographic memory on RUN/data -> RUN/vqvae (pose phase, then the root-velocity decoder).

    accelerate launch scripts/vqvae.py recipes/tiny.yaml [--field value ...]
"""

import sys

from e3d2_hf.recipe import run_stage
from e3d2_hf.trainers.vqvae import VQVAETrainingConfig, train_vqvae


def main(argv: list[str] | None = None) -> int:
    return run_stage("vqvae", VQVAETrainingConfig, train_vqvae, argv)


if __name__ == "__main__":
    sys.exit(main())
