"""The paper's evaluation metrics, computed exactly as the reference protocol does (docs: metrics.md).

    from e3d2_hf.metrics import evaluate_dances, kinetic_features, manual_features
    results = evaluate_dances(generated, ground_truth, music_beats)  # FID_k, FID_g, Div_k, Div_g, BAS, PFC

`e3d2 metrics` runs the same on folders of dance files; `evaluate.load(EVALUATE_MODULE_PATH)` gives
it as a Hugging Face `evaluate` module.
"""

from pathlib import Path

from e3d2_hf.metrics.features import FEATURE_VERSION, MANUAL_FEATURES, kinetic_features, manual_features, motion_features
from e3d2_hf.metrics.intervals import metric_draws, metric_intervals, paired_interval
from e3d2_hf.metrics.protocol import (
    ClipScores,
    DanceFeatures,
    constant_features,
    evaluate_dances,
    format_table,
    ground_truth_features,
    load_dance_file,
    load_dance_folder,
    score_clips,
    table_metrics,
)
from e3d2_hf.metrics.scores import (
    PFC_SCALE,
    MetricWarning,
    average_pairwise_distance,
    beat_align_score,
    frechet_distance,
    kinematic_beats,
    physical_foot_contact,
)

# `evaluate.load(EVALUATE_MODULE_PATH)` (a folder whose script has the folder's name).
EVALUATE_MODULE_PATH = str(Path(__file__).resolve().parent / "evaluate_module" / "e3d2_dance_metrics")

__all__ = [
    "EVALUATE_MODULE_PATH",
    "FEATURE_VERSION",
    "MANUAL_FEATURES",
    "PFC_SCALE",
    "ClipScores",
    "DanceFeatures",
    "MetricWarning",
    "average_pairwise_distance",
    "beat_align_score",
    "constant_features",
    "evaluate_dances",
    "format_table",
    "frechet_distance",
    "ground_truth_features",
    "kinematic_beats",
    "kinetic_features",
    "load_dance_file",
    "load_dance_folder",
    "manual_features",
    "metric_draws",
    "metric_intervals",
    "motion_features",
    "paired_interval",
    "physical_foot_contact",
    "score_clips",
    "table_metrics",
]
