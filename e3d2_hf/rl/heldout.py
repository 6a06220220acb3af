"""The one held-out evaluation: policies dance to the held-out music with the same random numbers and are scored alike.

Protocol (method.md, metrics.md): one dance per held-out piece (paper: the 40 AIST++ val + test
pieces), starting from the pose code of its ground-truth dance's first 8 frames, to the whole piece
as Bailando's test does (`mc_gpt_all.py` lines 270-314: `gpt.sample` over the piece's whole music;
`dance_seconds` cuts it shorter to save time); FID and Div score the first `fid_div_seconds` of
each dance (Bailando: 20 s), BAS the whole dance; decoded greedily (Table 1, as Bailando's test)
or sampled with a generator seeded by `seed_of(seed, -2)` (PPO's evaluation), so every policy compared faces the same
random numbers. Each policy's dances get

- the learned return (the reward model's, paper Eq. 4), when a reward model is given;
- the exact per-step KL to a reference policy (PPO: pi_BC) and the policy's per-step entropy
  (both under the sampling distribution, on the states its dances visit), when a reference is given;
- FID_k, FID_g, Div_k, Div_g against the features of the reference set (`GroundTruth`: Bailando's,
  every motion of the release minus the ignore list, `e3d2_hf.data.prepare.load_reference_dances`),
  BAS against each piece's music beats, and PFC (`e3d2_hf.metrics.evaluate_dances`), with 95%
  bootstrap intervals over the pieces when asked.

`reconstruct` decodes the ground truth's own pose codes instead (the VQ-VAE's ceiling: what a
policy that chose every code as the data did would dance), and `dance(..., noise_level=1)` the
uniformly random codes (the floor).

Two users: Table 1 (`e3d2_hf.evaluation.table_1`) and PPO's periodic and final evaluations, which
`e3d2_hf.trainers.ppo.train_ppo` hands to the trainer as its `evaluator`. Given the pieces' splits,
PPO's evaluation record also scores each split alone (`splits`), so that a choice made on one of
them (PPO's best policy, on val) reads none of the other's numbers (test, which Table 1 reports). It lives in `rl/`, below the
trainers, because both need it; it imports only `rl/`, `models/`, `metrics/` and `data/`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

from e3d2_hf.data.prepare import load_reference_dances
from e3d2_hf.metrics import evaluate_dances, ground_truth_features
from e3d2_hf.metrics.protocol import FID_DIV_SECONDS
from e3d2_hf.rl.environment import Episodes, HeldOutPieces
from e3d2_hf.rl.ppo_formulas import categorical_kl, sampling_logits
from e3d2_hf.rl.rewards import LearnedReward
from e3d2_hf.rl.seeding import seed_of
from e3d2_hf.utils import E3D2Error

if TYPE_CHECKING:
    from e3d2_hf.models.configuration_vqvae import VQVAEConfig
    from e3d2_hf.models.modeling_policy import E3D2PolicyModel
    from e3d2_hf.models.modeling_vqvae import E3D2VQVAE

logger = logging.getLogger(__name__)


def held_out_steps(dance_seconds: float | None, fps: float, frames_per_step: int) -> int | None:
    """Pose-code steps of the first `dance_seconds` of a piece: max(2, round(S * fps / frames_per_step)); None: the whole piece."""
    return None if dance_seconds is None else max(2, round(dance_seconds * fps / frames_per_step))


def held_out_pieces(
    codes: datasets.DatasetDict, data: datasets.DatasetDict, splits: list[str], dance_seconds: float | None, vqvae_config: VQVAEConfig
) -> HeldOutPieces:
    """The pieces of the held-out `splits`, from their pose codes (`codes`) and prepared dances (`data`), each whole or cut to `dance_seconds`."""
    frames_per_step = vqvae_config.frames_per_code
    max_steps = held_out_steps(dance_seconds, vqvae_config.fps, frames_per_step)
    return HeldOutPieces.from_codes([codes[split] for split in splits], [data[split] for split in splits], frames_per_step, max_steps)


@dataclass
class GroundTruth:
    """The reference set FID and Div compare with (name -> full-length 60 fps joints) and its features."""

    dances: dict[str, np.ndarray]
    features: Any

    @classmethod
    def from_prepared(cls, data: datasets.DatasetDict, data_path: str | Path) -> GroundTruth:
        """The reference set of the dataset prepared at `data_path` (`data`: its splits, loaded)."""
        dances = load_reference_dances(data_path, data)
        return cls(dances, ground_truth_features(dances))

    def clips(self, pieces: HeldOutPieces) -> dict[str, np.ndarray]:
        """The ground-truth dances of the held-out pieces, cut to the frames the policies dance."""
        frames = {name: len(beats) for name, beats in pieces.music_beats.items()}
        return {name: self.dances[name][: frames[name]] for name in pieces.names}


@dataclass
class HeldOutDances:
    """One policy's dances to the held-out pieces: clip name -> joints, learned return per piece, exact per-step KL and entropy."""

    clips: dict[str, np.ndarray]
    learned_returns: torch.Tensor | None
    kl: float | None
    entropy: float | None = None

    @property
    def learned_return(self) -> float | None:
        """Mean learned return over the pieces."""
        return float(self.learned_returns.mean()) if self.learned_returns is not None else None


class HeldOutEvaluation:
    """Dance every policy to the same held-out pieces with the same random numbers, then score the dances.

    Args:
        pieces: the held-out pieces (`held_out_pieces`).
        ground_truth: the dataset's dances and features; None skips decoding and the paper's metrics.
        learned_reward: scores the learned return of each dance; None skips it.
        batch_size: pieces danced together.
        do_sample: sample the dances (seeded); false: greedy.
        temperature, top_k: the sampling distribution (also the one the KL is measured under).
        seed: the run's seed; the dances use `seed_of(seed, -2)`.
        splits: the pieces' names by held-out split; with two or more, `evaluate` scores each split alone too.
        fid_div_seconds: FID and Div score the first S seconds of each dance (Bailando: 20); BAS the whole dance.
    """

    def __init__(
        self,
        pieces: HeldOutPieces,
        ground_truth: GroundTruth | None = None,
        learned_reward: LearnedReward | None = None,
        *,
        batch_size: int,
        do_sample: bool,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        splits: dict[str, list[str]] | None = None,
        fid_div_seconds: float = FID_DIV_SECONDS,
    ):
        unknown = sorted({name for names in (splits or {}).values() for name in names} - set(pieces.names))
        if unknown:
            raise E3D2Error(f"held-out evaluation: pieces {unknown[:3]} of the splits are not among the pieces danced")
        self.pieces, self.ground_truth, self.learned_reward = pieces, ground_truth, learned_reward
        self.splits = splits if splits is not None and len(splits) > 1 else {}
        self.batch_size, self.do_sample, self.temperature, self.top_k, self.seed = batch_size, do_sample, temperature, top_k, seed
        self.fid_div_seconds = fid_div_seconds
        self.warnings: list[str] = []  # the metrics' warnings so far, each once

    def __len__(self) -> int:
        return len(self.pieces)

    @torch.no_grad()
    def dance(self, policy: E3D2PolicyModel, reference_policy: E3D2PolicyModel | None = None, noise_level: float = 0.0) -> HeldOutDances:
        """The policy's dances to every piece, with their learned returns, their exact per-step KL to `reference_policy` and entropy.

        `noise_level`: stage 2's eps, each step's action (both codes) replaced by uniform codes with that probability (1: the random floor).
        """
        pieces, device = self.pieces, policy.device
        generator = torch.Generator(device=device).manual_seed(seed_of(self.seed, -2))  # the same random numbers for every policy
        returns, kls, entropies, clips = [], [], [], {}
        for rows in pieces.batches(self.batch_size):
            upper, lower, music, steps = pieces.dance(
                policy, rows, do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k, noise_level=noise_level,
                generator=generator,
            )  # fmt: skip
            if self.learned_reward is not None:
                returns.append(self._learned_returns(upper, lower, music, steps))
            if reference_policy is not None:
                mask = torch.arange(1, upper.shape[1], device=device)[None] < torch.as_tensor(steps, device=device)[:, None]
                kl, entropy = self.exact_kl_and_entropy(policy, reference_policy, upper, lower, music, mask)
                kls.append(kl.cpu())
                entropies.append(entropy.cpu())
            if self.ground_truth is not None and policy.vqvae is not None:
                clips.update(pieces.joints(policy.vqvae, rows, upper, lower))
        actions = float((pieces.steps - 1).sum())
        return HeldOutDances(
            clips=clips,
            learned_returns=torch.cat(returns) if returns else None,
            kl=float(torch.cat(kls).sum() / actions) if kls else None,
            entropy=float(torch.cat(entropies).sum() / actions) if entropies else None,
        )

    def reconstruct(self, vqvae: E3D2VQVAE) -> HeldOutDances:
        """The ground truth's own pose codes decoded (from its first root, cut as the policies' dances are) and their learned returns."""
        return self.decode_codes(vqvae, self.pieces.data_upper, self.pieces.data_lower)

    @torch.no_grad()
    def decode_codes(self, vqvae: E3D2VQVAE, upper_codes: torch.Tensor, lower_codes: torch.Tensor) -> HeldOutDances:
        """Dances given as pose codes, one sequence (N, >= S) per piece in the pieces' order, decoded and scored by the learned reward."""
        pieces, returns, clips = self.pieces, [], {}
        for rows in pieces.batches(self.batch_size):
            steps = pieces.steps[rows]
            upper, lower = (torch.as_tensor(codes)[rows, : int(steps.max())] for codes in (upper_codes, lower_codes))
            if self.learned_reward is not None:
                returns.append(self._learned_returns(upper, lower, pieces.music_features[rows, : int(steps.max())], steps))
            clips.update(pieces.joints(vqvae, rows, upper.to(vqvae.device), lower.to(vqvae.device)))
        return HeldOutDances(clips=clips, learned_returns=torch.cat(returns) if returns else None, kl=None)

    def _learned_returns(self, upper: torch.Tensor, lower: torch.Tensor, music: torch.Tensor, steps: np.ndarray) -> torch.Tensor:
        return self.learned_reward.returns(Episodes(upper, lower, music, torch.zeros(0)), steps=torch.as_tensor(steps)).cpu()

    def exact_kl_and_entropy(
        self,
        policy: E3D2PolicyModel,
        reference_policy: E3D2PolicyModel,
        upper: torch.Tensor,
        lower: torch.Tensor,
        music: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per dance, sums over steps of KL(pi(.|s_t) || pi_ref(.|s_t)) and of H(pi(.|s_t)), upper + lower half (exact, from the logits)."""
        ours = policy.log_probs(upper, lower, music)
        reference = reference_policy.log_probs(upper, lower, music)
        kl = torch.zeros_like(mask, dtype=torch.float32)
        entropy = torch.zeros_like(kl)
        for half in ("upper_logits", "lower_logits"):
            log_p = sampling_logits(getattr(ours, half), self.temperature, self.top_k).log_softmax(-1)
            log_q = sampling_logits(getattr(reference, half), self.temperature, self.top_k).log_softmax(-1)
            kl += categorical_kl(log_p, log_q)
            entropy -= (log_p.exp() * log_p).sum(-1)
        return (kl * mask).sum(-1), (entropy * mask).sum(-1)

    def scores(
        self,
        clips: dict[str, np.ndarray],
        what: str,
        log_level: int = logging.WARNING,
        intervals: int = 0,
        piece_of: dict[str, str] | None = None,
        keep_draws: bool = False,
    ) -> dict[str, Any]:
        """The paper's metrics of `clips` against the ground truth (with "ci95" from `intervals` bootstrap
        draws of the pieces, when > 0); their warnings (about the data, not errors) logged once each and
        kept in `warnings`. A clip is named after its piece, or `piece_of` names the piece of each clip.
        With `keep_draws`, "draws" holds the bootstrap draws' values: every call draws the pieces alike."""
        beats = {name: self.pieces.music_beats[piece_of[name] if piece_of else name] for name in clips}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = evaluate_dances(
                clips, self.ground_truth.features, beats, intervals=intervals, seed=seed_of(self.seed, -3), keep_draws=keep_draws,
                fid_div_seconds=self.fid_div_seconds,
            )
        for message in dict.fromkeys(str(warning.message) for warning in caught):
            logger.log(log_level, "%s: %s", what, message)
            self.warnings.append(f"{what}: {message}")
        return scores

    def evaluate(self, policy: E3D2PolicyModel, reference_policy: E3D2PolicyModel) -> dict[str, Any]:
        """PPO's evaluation record: learned return (total and per step), exact per-step KL to pi_BC and entropy, the paper's metrics,
        and, with splits, each split's learned return and metrics (`splits`: split -> {learned_return, metrics}).

        Metrics that cannot be computed (fewer than 2 clips, degenerate data) are None: an
        evaluation never stops training. The metrics' warnings, which repeat at every evaluation,
        are logged at INFO.
        """
        dances = self.dance(policy, reference_policy)
        per_step = dances.learned_returns / torch.as_tensor(self.pieces.steps - 1) if dances.learned_returns is not None else None
        record = {
            "learned_return": dances.learned_return,
            "learned_return_per_step": float(per_step.mean()) if per_step is not None else None,
            "kl": dances.kl,
            "entropy": dances.entropy,
            "metrics": self._metrics_while_training(dances.clips) if dances.clips else None,
        }
        if self.splits:
            row_of = {name: row for row, name in enumerate(self.pieces.names)}
            record["splits"] = {}
            for split, names in self.splits.items():
                returns = dances.learned_returns[[row_of[name] for name in names]] if dances.learned_returns is not None else None
                clips = {name: dances.clips[name] for name in names if name in dances.clips}
                record["splits"][split] = {
                    "learned_return": float(returns.mean()) if returns is not None and len(returns) else None,
                    "metrics": self._metrics_while_training(clips) if clips else None,
                }
        return record

    def _metrics_while_training(self, clips: dict[str, np.ndarray]) -> dict[str, float | None] | None:
        if len(clips) < 2:
            return None
        try:
            return self.scores(clips, "held-out evaluation", log_level=logging.INFO)
        except E3D2Error as exc:
            logger.warning("evaluation metrics skipped: %s", exc)
            return None


__all__ = ["GroundTruth", "HeldOutDances", "HeldOutEvaluation", "held_out_pieces", "held_out_steps"]
