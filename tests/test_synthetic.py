"""The embedded synthetic dataset: AIST++ layout, determinism, physical plausibility, beats and genres."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.ndimage import gaussian_filter1d

from e3d2_hf.data import aistpp, music
from e3d2_hf.data import synthetic as synth
from e3d2_hf.data.synthetic.keys import MIRROR_SIGN, MIRROR_SWAP
from e3d2_hf.metrics import MetricWarning, constant_features, ground_truth_features
from e3d2_hf.metrics.scores import beat_align_score, kinematic_beats
from e3d2_hf.motion.capture import jitter
from e3d2_hf.motion.skeleton import forward_kinematics

NUM_SEQUENCES = 20
SECONDS = (6.0, 8.0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.generate_synthetic_aistpp(tmp_path_factory.mktemp("synthetic"), NUM_SEQUENCES, seed=7, seconds=SECONDS)


@pytest.fixture(scope="module")
def dances(root: Path) -> list[dict]:
    """Every sequence as the reader sees it: split, genre, poses, joints (FK of trans / scaling) and tempo."""
    info = json.loads((root / "synthetic_info.json").read_text())["music"]
    rows = []
    for split in aistpp.SPLITS:
        for sequence in aistpp.read_split(root, split):
            motion = aistpp.load_motion(sequence.motion_path)
            rows.append({
                "split": split, "sequence": sequence, "poses": motion.poses, "bpm": info[sequence.music_id]["bpm"],
                "joints": forward_kinematics(motion.poses, motion.trans / motion.scaling),
            })  # fmt: skip
    return rows


def test_layout_is_what_the_aistpp_reader_reads(root: Path, dances: list[dict]) -> None:
    assert (root / "ignore_list.txt").is_file()
    counts = {split: sum(row["split"] == split for row in dances) for split in aistpp.SPLITS}
    assert sum(counts.values()) == NUM_SEQUENCES and counts["val"] >= 1 and counts["test"] >= 1
    assert counts["train"] >= 0.7 * NUM_SEQUENCES  # about 80 / 10 / 10
    music_of = {split: {row["sequence"].music_id for row in dances if row["split"] == split} for split in aistpp.SPLITS}
    assert not music_of["train"] & (music_of["val"] | music_of["test"])  # cross-modal: held-out music is new
    info = json.loads((root / "synthetic_info.json").read_text())
    assert set(info["genres"]) == {genre.code for genre in synth.GENRES}
    for row in dances:
        sequence = row["sequence"]
        assert sequence.name.startswith(f"g{sequence.genre}_sBM_cAll_d") and sequence.music_id.startswith(f"m{sequence.genre}")
        assert info["music"][sequence.music_id]["genre"] == sequence.genre
        raw = pickle.loads(sequence.motion_path.read_bytes())
        assert raw["smpl_poses"].shape == (len(row["joints"]), 72) and raw["smpl_poses"].dtype == np.float32
        assert raw["smpl_trans"].dtype == np.float32 and raw["smpl_scaling"].shape == (1,)
        assert 80 < raw["smpl_scaling"][0] < 110 and np.abs(raw["smpl_trans"][:, 1]).mean() > 10  # scaled units, not metres
        audio, sample_rate = soundfile.read(sequence.music_path)
        assert audio.ndim == 1 and sample_rate == synth.SAMPLE_RATE and soundfile.info(sequence.music_path).subtype == "PCM_16"
        seconds = info["music"][sequence.music_id]["seconds"]
        assert SECONDS[0] <= seconds <= SECONDS[1] and abs(len(audio) / sample_rate - seconds) < 0.01
        assert len(row["joints"]) == int(seconds * synth.FPS) and np.isfinite(row["joints"]).all()
        assert 0.8 < np.median(row["joints"][:, 0, 1]) < 1.05  # pelvis height in metres once divided by the scaling


def test_same_seed_same_files_other_seed_other_dances(root: Path, tmp_path: Path) -> None:
    again = synth.generate_synthetic_aistpp(tmp_path / "again", NUM_SEQUENCES, seed=7, seconds=SECONDS)
    files = sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file())
    for path in files:
        assert (root / path).read_bytes() == (again / path).read_bytes(), path
    other = synth.generate_synthetic_aistpp(tmp_path / "other", 3, seed=8, seconds=SECONDS)
    first = sorted((other / "motions").iterdir())[0]
    twin = root / "motions" / first.name
    assert not twin.exists() or twin.read_bytes() != first.read_bytes()


def test_three_sequences_fill_every_split_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    out = synth.generate_synthetic_aistpp(tmp_path / "tiny", 3, seed=0, seconds=(1.0, 1.5))
    assert all(len(aistpp.read_split(out, split)) == 1 for split in aistpp.SPLITS)
    with pytest.raises(ValueError, match="at least 3"):
        synth.generate_synthetic_aistpp(tmp_path / "two", 2)
    with pytest.raises(ValueError, match="seconds"):
        synth.generate_synthetic_aistpp(tmp_path / "backwards", 3, seconds=(5.0, 2.0))


def test_feet_on_the_floor_and_not_sliding(dances: list[dict]) -> None:
    grounded, planted_speed = [], []
    for row in dances:
        joints = row["joints"]
        lowest = joints[:, synth.FOOT_JOINTS, 1].min(axis=1)
        assert lowest.min() >= synth.FLOOR_CLEARANCE - 1e-4  # never through the floor
        assert joints[:, :, 1].min() >= 0.0  # no joint at all below the floor
        grounded.append(np.abs(lowest - synth.FLOOR_CLEARANCE) < 0.005)
        steady = gaussian_filter1d(joints, 2.0, axis=0)  # without the capture noise, which jitters planted feet too
        for foot in (10, 11):  # a foot on the floor stays where it is
            on_floor = joints[:, foot, 1] < synth.FLOOR_CLEARANCE + 0.005
            both = on_floor[1:] & on_floor[:-1]
            planted_speed.append(np.linalg.norm(np.diff(steady[:, foot][:, [0, 2]], axis=0), axis=-1)[both] * synth.FPS)
    assert np.concatenate(grounded).mean() > 0.9  # off the floor only in the flight of jumps
    planted_speed = np.concatenate(planted_speed)
    assert np.median(planted_speed) < 0.01 and np.percentile(planted_speed, 95) < 0.3  # m/s


def test_joints_bend_the_human_way(dances: list[dict]) -> None:
    for row in dances:
        poses, joints = row["poses"], row["joints"]
        assert (poses[:, [4, 5], 0] > 0.0).all()  # knees flex, never hyperextend
        assert np.abs(poses[:, [4, 5], 1:]).max() < 0.3  # and are nearly pure hinges
        assert (poses[:, 18, 1] <= 0).all() and (poses[:, 19, 1] >= 0).all()  # elbows bend one way
        assert np.abs(poses[:, [18, 19]][:, :, [0, 2]]).max() == 0.0
        assert np.linalg.norm(poses[:, [18, 19]], axis=-1).max() <= 2.5 + 1e-6
        thigh = joints[:, [4, 5]] - joints[:, [1, 2]]
        shin = joints[:, [7, 8]] - joints[:, [4, 5]]
        cosine = (thigh * shin).sum(-1) / np.linalg.norm(thigh, axis=-1) / np.linalg.norm(shin, axis=-1)
        assert np.degrees(np.arccos(np.clip(cosine, -1, 1))).max() < 135  # knee flexion
        head_above_pelvis = joints[:, 15, 1] - joints[:, 0, 1]
        assert head_above_pelvis.min() > 0.0 and np.median(head_above_pelvis) > 0.5  # no falls; low only in breaking's drops


def test_every_feature_varies_over_the_ground_truth(dances: list[dict]) -> None:
    """Capture noise and fast torso moves: no kinetic or manual feature is the same on every dance, so
    the protocol's normalisation by the ground truth's std never divides by 1e-10 (the warning stays silent)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricWarning)
        features = ground_truth_features({row["sequence"].name: row["joints"] for row in dances}, cache=False)
    assert constant_features(features) == []
    assert (features.manual[:, [4, 5, 27, 28, 29, 30]] > 0).any(axis=0).all()  # once 0 on every synthetic dance


def test_capture_jitter_is_the_measured_one(dances: list[dict]) -> None:
    assert 0.8 * synth.CAPTURE_JITTER < jitter([row["joints"] for row in dances], synth.FPS) < 1.25 * synth.CAPTURE_JITTER


def test_motion_beats_fall_on_the_music_beats(dances: list[dict]) -> None:
    """Kinematic beats (minima of the smoothed joint speed) align with the music's beats, not with a
    random shift of them."""
    rng = np.random.default_rng(0)
    aligned, shifted = [], []
    for row in dances:
        motion_beats = kinematic_beats(row["joints"])
        period = 60.0 * synth.FPS / row["bpm"]
        music_beats = np.arange(0.0, len(row["joints"]) - 1, period)
        aligned.append(beat_align_score(music_beats, motion_beats))
        shifted.append(np.mean([beat_align_score(music_beats + shift * period, motion_beats) for shift in rng.uniform(0.2, 0.8, 8)]))
    assert np.mean(aligned) > 0.75 and np.mean(shifted) < 0.25
    assert min(a - s for a, s in zip(aligned, shifted)) > 0.3


@pytest.mark.parametrize("genre", synth.GENRES, ids=lambda genre: genre.code)
def test_music_beats_are_found_by_the_feature_extractor(genre: synth.Genre) -> None:
    bpm = float(np.mean(genre.tempo))
    audio, beats = synth.compose_music(genre, bpm, 6.0, np.random.default_rng(1))
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0 and np.allclose(np.diff(beats), 60.0 / bpm)
    import librosa

    features = music.extract_music_features(librosa.resample(audio, orig_sr=synth.SAMPLE_RATE, target_sr=music.sample_rate_for(60.0)))
    found = np.flatnonzero(features[:, music.BEAT_COLUMN]) / 60.0
    assert len(found) >= 0.8 * len(beats)
    distance = np.abs(found[:, None] - beats[None, :]).min(axis=1)
    assert np.mean(distance < 0.07) > 0.85  # on the beats, not on the off-beats


def _style(joints: np.ndarray) -> list[float]:
    """Tempo-free motion style: energy and where it is (hands, feet), bounce, sharpness of the hits, and
    posture (pelvis height, feet apart, torso lean)."""
    speed = np.linalg.norm(np.diff(joints, axis=0), axis=-1) * synth.FPS
    smoothed = gaussian_filter1d(speed.mean(axis=1), 2)
    return [
        speed.mean(), speed[:, [20, 21]].mean() / speed.mean(), speed[:, [7, 8]].mean() / speed.mean(),
        np.std(joints[:, 0, 1]), np.percentile(smoothed, 90) / (np.percentile(smoothed, 10) + 0.05),
        np.median(joints[:, 0, 1]), np.linalg.norm(joints[:, 10] - joints[:, 11], axis=-1).mean(),
        np.linalg.norm((joints[:, 12] - joints[:, 0])[:, [0, 2]], axis=-1).mean(),
    ]  # fmt: skip


def test_genres_differ_in_tempo_and_in_how_they_are_danced(root: Path, dances: list[dict]) -> None:
    tempo = {genre.code: [] for genre in synth.GENRES}
    for piece in json.loads((root / "synthetic_info.json").read_text())["music"].values():
        tempo[piece["genre"]].append(piece["bpm"])
    means = sorted(np.mean(values) for values in tempo.values() if values)
    assert means[-1] - means[0] > 25
    # leave-one-out nearest genre centroid on motion style alone (chance: 1 in 5)
    style = np.array([_style(row["joints"]) for row in dances])
    style = (style - style.mean(axis=0)) / style.std(axis=0)
    genres = np.array([row["sequence"].genre for row in dances])
    correct = 0
    for index in range(len(genres)):
        others = np.arange(len(genres)) != index
        centroids = {g: style[others & (genres == g)].mean(axis=0) for g in set(genres[others])}
        correct += min(centroids, key=lambda g: np.linalg.norm(style[index] - centroids[g])) == genres[index]
    assert correct / len(genres) >= 0.5


def test_markov_chains_and_moves_are_consistent() -> None:
    for genre in synth.GENRES:
        assert set(genre.lower_moves) <= set(synth.LOWER_MOVES) and set(genre.upper_moves) <= set(synth.UPPER_MOVES)
        names, transition = synth.markov_chain(genre, genre.lower_moves)
        assert np.allclose(transition.sum(axis=1), 1.0) and (transition > 0).all() and len(names) == len(genre.lower_moves)
    assert 80 <= min(g.tempo[0] for g in synth.GENRES) and max(g.tempo[1] for g in synth.GENRES) <= 140
    # a mirrored dance is the same dance led by the other side
    neutral = synth.neutral_pose(synth.make_dancer(np.random.default_rng(0)), synth.GENRES[0])
    mirrored = neutral[MIRROR_SWAP] * MIRROR_SIGN
    np.testing.assert_allclose(mirrored, neutral)
