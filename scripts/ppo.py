"""Stage 4: PPO fine-tuning of RUN/bc against the learned reward RUN/reward -> RUN/ppo (policy/, summary.json, checkpoints).

    python scripts/ppo.py recipes/tiny.yaml [--field value ...]
    accelerate launch scripts/ppo.py recipes/e3d2.yaml                        # one GPU
    accelerate launch --multi_gpu --num_processes 8 scripts/ppo.py recipes/e3d2.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/ppo.py recipes/tiny.yaml   # 2 CPU ranks (gloo), no GPU needed
    python scripts/ppo_beat.py recipes/tiny.yaml                               # paper Table 2: Bailando's reward -> RUN/ppo_beat
    python scripts/ppo.py recipes/tiny.yaml --resume true                      # continue a killed run

On a CPU-only machine `accelerate launch --cpu --num_processes 2` starts a single process (accelerate's
simple launcher); use `--multi_gpu` (or `torchrun --nproc_per_node 2`) to get two gloo ranks.
"""

import sys

from e3d2_hf.recipe import run_stage
from e3d2_hf.trainers.ppo import train_ppo
from e3d2_hf.trainers.ppo_config import PPOConfig

if __name__ == "__main__":
    sys.exit(run_stage("ppo", PPOConfig, train_ppo))
