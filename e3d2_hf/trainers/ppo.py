"""Stage 4 from a run folder: PPO fine-tuning of the behaviour-cloning policy against the learned reward (paper stage 4, Table 7).

    python scripts/ppo.py recipes/tiny.yaml          # -> RUN/ppo

`train_ppo` wires the stage: the BC policy and its VQ-VAE, the reward, the training music segments
(the MDP, `e3d2_hf.rl.environment`), the held-out evaluation, then `PPOTrainer.train`. Its parts
sit beside it: `ppo_config` (the recipe's `ppo:` section), `ppo_trainer` (the loop), `checkpoints`,
`ppo_model_card`; the formulas are `e3d2_hf.rl.ppo_formulas`.

The held-out evaluation (`e3d2_hf.rl.heldout`, the one Table 1 uses) reaches the trainer as
its `evaluator`, built here: the trainer knows only the `PolicyEvaluator` protocol, and the
evaluation module imports nothing of `trainers/`, so this entry point is the one place where the
two meet.

Reads RUN/bc (policy + its VQ-VAE), RUN/reward, RUN/data and the shared pose-code cache RUN/pose_codes
(`e3d2_hf.trainers.pose_codes`, encoded there with the policy's VQ-VAE when missing or stale).
Outputs in `output_dir` (RUN/ppo):
    checkpoints/checkpoint-NNNNNN/  model.safetensors (policy + value network), optimizer.pt,
                           rng_state.pt, trainer_state.json (+ best_policy.safetensors, the best
                           policy so far, with `best_policy_metric`); written atomically, the last
                           `save_total_limit` kept; `--resume` continues from the newest
    log.jsonl              one line per PPO step (and per evaluation: the whole held-out set and each split alone)
    curves.png             learned return, KL, entropy, explained variance, held-out FID_k, Div_k and BAS, beta over steps
    tensorboard/           tracker logs
    policy/                the final policy (with `best_policy_metric`: the best on `best_policy_split`):
                           `save_pretrained` + its VQ-VAE (policy/vqvae) + model card;
                           `AutoModelForCausalLM.from_pretrained(RUN/ppo/policy)` after
                           `import e3d2_hf.models.modeling_policy`
    summary.json           written last: BC vs the saved policy's learned return and metrics on held-out
                           music, which step's policy was saved and why, KL, steps, samples/s, curves

Processes: one CPU process, one GPU, or DDP over several processes. On CPU-only machines,
`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.15's simple launcher);
start real gloo ranks with
    accelerate launch --multi_gpu --num_processes 2 scripts/ppo.py recipes/tiny.yaml
(or `torchrun --nproc_per_node 2 scripts/ppo.py recipes/tiny.yaml`): the trainer asks Accelerate for
CPU ranks whenever no GPU is visible, so the processes join one gloo group.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import set_seed

from e3d2_hf.data.prepare import load_prepared
from e3d2_hf.rl.heldout import GroundTruth, HeldOutEvaluation, held_out_pieces
from e3d2_hf.rl.environment import MusicSegments
from e3d2_hf.rl.rewards import BeatAlignmentReward, LearnedReward, RewardFunction
from e3d2_hf.trainers.loading import load_run_policy, load_run_reward_model
from e3d2_hf.trainers.pose_codes import load_or_encode_codes
from e3d2_hf.trainers.ppo_config import PPOConfig
from e3d2_hf.trainers.ppo_trainer import PPOTrainer, make_accelerator
from e3d2_hf.utils import E3D2Error

logger = logging.getLogger(__name__)


def train_ppo(config: PPOConfig) -> Path:
    """Stage 4 from a run folder: BC policy + reward + prepared data -> `config.output_dir` (RUN/ppo); returns it."""
    accelerator = make_accelerator(config)
    try:  # a process that stops (even on an error) leaves the process group cleanly, not with gloo's abort
        set_seed(config.seed)
        device = accelerator.device
        policy = load_run_policy(config.policy_path).to(device)
        vqvae = policy.load_vqvae().to(device)
        reward_model = load_run_reward_model(config.reward_model_path, required=config.reward == "learned")
        learned_reward = LearnedReward(reward_model) if reward_model is not None else None
        if config.reward == "learned":
            reward_function: RewardFunction = learned_reward
        else:
            reward_function = BeatAlignmentReward(vqvae, config.beat_reward, config.orientation_weight)

        data = load_prepared(config.data_path)
        unknown = [split for split in config.eval_splits if split not in data]
        if unknown:
            raise E3D2Error(f"ppo: eval_splits {unknown} are not splits of {config.data_path} ({', '.join(data)})")
        with accelerator.main_process_first():  # the main process encodes RUN/pose_codes if needed, the others read it
            codes = load_or_encode_codes(config.run_dir, vqvae, data_path=config.data_path, progress=accelerator.is_main_process)
        segments = MusicSegments.from_codes(codes["train"], config.segment_steps, config.segment_stride, vqvae.config.frames_per_code)
        evaluator = None
        if accelerator.is_main_process:  # the trainer evaluates on the main process only
            evaluator = HeldOutEvaluation(
                held_out_pieces(codes, data, config.eval_splits, config.eval_dance_seconds, vqvae.config),
                GroundTruth.from_prepared(data, config.data_path) if config.eval_metrics else None,
                learned_reward,
                batch_size=config.per_device_rollout_batch_size,
                do_sample=config.eval_do_sample,
                temperature=config.temperature,
                top_k=config.top_k,
                seed=config.seed,
                splits={split: [str(name) for name in codes[split]["name"]] for split in config.eval_splits},
                fid_div_seconds=config.eval_fid_div_seconds,
            )
        trainer = PPOTrainer(config, policy, reward_function, segments, learned_reward=learned_reward, evaluator=evaluator, accelerator=accelerator)
        summary = trainer.train()
        if accelerator.is_main_process:
            logger.info(
                "PPO -> %s: learned return BC %s -> final %s, per-step KL %s, %.1f episodes/s",
                config.output_dir, summary["learned_return_bc"], summary["learned_return_final"], summary["kl_final"],
                summary["samples_per_second"] or 0.0,
            )  # fmt: skip
    finally:
        accelerator.state.destroy_process_group()
    return Path(config.output_dir)


__all__ = ["train_ppo"]
