"""E3D2 / Bailando dance metrics as a Hugging Face `evaluate` module (works offline).

    import evaluate
    from e3d2_hf.metrics import EVALUATE_MODULE_PATH
    metric = evaluate.load(EVALUATE_MODULE_PATH)
    metric.compute(predictions=generated_joints, ground_truth=ground_truth_joints, music_beats=beats)

A thin wrapper around `e3d2_hf.metrics.evaluate_dances`: the numbers are the same.
"""

import datasets
import evaluate
import numpy as np

from e3d2_hf.metrics import evaluate_dances

_CITATION = """\
@inproceedings{siyao2022bailando,
  title={Bailando: 3D Dance Generation by Actor-Critic GPT with Choreographic Memory},
  author={Siyao, Li and Yu, Weijiang and Gu, Tianpei and Lin, Chunze and Wang, Quan and Qian, Chen and Loy, Chen Change and Liu, Ziwei},
  booktitle={CVPR},
  year={2022}
}
"""

_DESCRIPTION = """\
The music-to-dance metrics of Bailando's protocol (reported by E3D2's Table 1): FID_k and FID_g
(Frechet distance of kinetic and geometric motion features to a ground-truth set), Div_k and Div_g
(mean pairwise feature distance), BAS (beat align score) and EDGE's PFC (physical foot contact,
x 1e4). Generated clips are cut to their first 1200 frames at 60 fps and shifted by their first
frame's root; the ground truth is used at full length with the same shift.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated dances, each joints (T, 24, 3) in metres, y up, SMPL order, at `fps`.
    ground_truth: the ground-truth dances (list of (T, 24, 3) arrays at `ground_truth_fps`), or
        `e3d2_hf.metrics.ground_truth_features(...)`.
    music_beats: optional, one beat track per prediction (one-hot (T,) or frame indices at `fps`).
    fps: frame rate of the predictions (default 60; others are resampled to 60 linearly).
    ground_truth_fps: frame rate of the ground truth (default 60).
    corrected: fix the reference features' bugs (default False: the published protocol).
    cache_ground_truth: cache ground-truth features on disk by content (default True).
Returns:
    FID_k, FID_g, Div_k, Div_g, BAS (None without music_beats), PFC, Div_k_gt, Div_g_gt.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class E3D2DanceMetrics(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Array3D(shape=(None, 24, 3), dtype="float32")}),
        )

    def _compute(
        self,
        predictions,
        ground_truth,
        music_beats=None,
        fps: float = 60.0,
        ground_truth_fps: float = 60.0,
        corrected: bool = False,
        cache_ground_truth: bool = True,
    ) -> dict:
        names = [f"prediction[{index}]" for index in range(len(predictions))]
        generated = {name: np.asarray(joints, dtype=np.float32) for name, joints in zip(names, predictions)}
        beats = None
        if music_beats is not None:
            if len(music_beats) != len(names):
                raise ValueError(f"music_beats: {len(music_beats)} tracks for {len(names)} predictions")
            beats = {name: np.asarray(track) for name, track in zip(names, music_beats)}
        return evaluate_dances(
            generated,
            ground_truth,
            beats,
            fps,
            ground_truth_fps=ground_truth_fps,
            corrected=corrected,
            cache_ground_truth=cache_ground_truth,
        )
