"""`e3d2 metrics` on small folders (every supported file format), its errors, and the `evaluate` module."""

import collections
import json
import pickle

import numpy as np
import pytest

from e3d2_hf.cli import main
from e3d2_hf.metrics import EVALUATE_MODULE_PATH, evaluate_dances, load_dance_file
from e3d2_hf.metrics.reference import random_dance


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))


def _dances(seed: int, count: int, num_frames: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_dance(rng, num_frames, wobble=0.02) for _ in range(count)]


def _z_up(joints: np.ndarray) -> np.ndarray:
    """y-up -> z-up as EDGE stores joints: (x, y, z) -> (x, -z, y)."""
    return np.stack([joints[..., 0], -joints[..., 2], joints[..., 1]], axis=-1)


@pytest.fixture
def folders(tmp_path):
    generated = _dances(0, 5, 180)
    truth = _dances(1, 4, 240)
    generated_dir, truth_dir, beats_dir = tmp_path / "ours", tmp_path / "gt", tmp_path / "beats"
    for folder in (generated_dir, truth_dir, beats_dir):
        folder.mkdir()
    np.save(generated_dir / "a.npy", generated[0])
    np.save(generated_dir / "b.npy", generated[1].reshape(180, 72))
    (generated_dir / "c.pkl").write_bytes(pickle.dumps({"pred_position": generated[2].reshape(180, 72)}))
    np.save(generated_dir / "d.pkl.npy", {"pred_position": generated[3]})  # Bailando's np.save of a dict
    (generated_dir / "e.pkl").write_bytes(pickle.dumps({"full_pose": _z_up(generated[4]), "smpl_trans": np.zeros((180, 3))}))
    (generated_dir / "notes.txt").write_text("not a dance")
    (generated_dir / "kinetic_features").mkdir()  # Bailando keeps feature folders beside the dances
    for index, joints in enumerate(truth):
        np.save(truth_dir / f"gt{index}.npy", joints)
    for name in "abcde":
        track = np.zeros(180, dtype=np.float32)
        track[20::30] = 1
        np.save(beats_dir / f"{name}.npy", track)
    in_memory = {name: joints for name, joints in zip("abcde", generated)}
    return generated_dir, truth_dir, beats_dir, in_memory, truth


pytestmark = pytest.mark.filterwarnings("ignore::e3d2_hf.metrics.MetricWarning")  # tiny random sets; tested below


def test_cli_prints_table_1_and_writes_json(folders, tmp_path, capsys):
    generated_dir, truth_dir, beats_dir, in_memory, truth = folders
    out = tmp_path / "eval" / "metrics.json"
    code = main(["metrics", "--generated", str(generated_dir), "--ground-truth", str(truth_dir),
                 "--beats", str(beats_dir), "--json", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0
    header = next(line for line in printed.splitlines() if line.startswith("Method"))
    assert header.split() == ["Method", "FID_k", "FID_g", "Div_k", "Div_g", "BAS", "PFC"]
    assert "Ground Truth" in printed and "EDGE full_pose is z-up" in printed
    report = json.loads(out.read_text())
    expected = evaluate_dances(in_memory, truth, {name: np.load(beats_dir / f"{name}.npy") for name in "abcde"})
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, rel=1e-6)
    assert report["protocol"]["num_generated"] == 5 and report["protocol"]["num_ground_truth"] == 4
    assert 0 < report["BAS"] <= 1
    # 4 ground-truth clips are too few: a constant feature is reported, on stderr and in the JSON.
    assert report["protocol"]["warnings"] and all(f"warning: {line}" in captured.err for line in report["protocol"]["warnings"])


def test_cli_without_beats_reports_no_bas_and_says_so(folders, capsys):
    generated_dir, truth_dir, *_ = folders
    assert main(["metrics", "--generated", str(generated_dir), "--ground-truth", str(truth_dir)]) == 0
    printed = capsys.readouterr().out
    assert "BAS not computed" in printed
    assert printed.splitlines()[-2].split()[5] == "-"  # the method row's BAS cell


def test_cli_says_when_it_upsamples(folders, capsys):
    generated_dir, truth_dir, beats_dir, *_ = folders
    assert main(["metrics", "--generated", str(generated_dir), "--ground-truth", str(truth_dir), "--fps", "30"]) == 0
    assert "at 30 fps were upsampled to 60 fps by linear interpolation" in capsys.readouterr().out


def test_cli_errors_are_one_line_and_exit_2(folders, tmp_path, capsys):
    generated_dir, truth_dir, *_ = folders
    bad = np.zeros((100, 24, 3), dtype=np.float32)
    bad[50] = np.nan
    np.save(generated_dir / "f.npy", bad)
    assert main(["metrics", "--generated", str(generated_dir), "--ground-truth", str(truth_dir)]) == 2
    error = capsys.readouterr().err
    assert "f.npy" in error and "NaN" in error and len(error.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["metrics", "--generated", str(empty), "--ground-truth", str(truth_dir)]) == 2
    assert "no dance files" in capsys.readouterr().err


def test_missing_beats_name_the_clip(folders, capsys):
    generated_dir, truth_dir, beats_dir, *_ = folders
    (beats_dir / "c.npy").unlink()
    assert main(["metrics", "--generated", str(generated_dir), "--ground-truth", str(truth_dir), "--beats", str(beats_dir)]) == 2
    error = capsys.readouterr().err
    assert "--beats" in error and "1 generated clip(s): c" in error


def test_dance_files_load_as_y_up_joints(folders):
    generated_dir, _, _, in_memory, _ = folders
    for name, kind in (("a.npy", "array"), ("b.npy", "array"), ("c.pkl", "bailando"), ("d.pkl.npy", "bailando"), ("e.pkl", "edge")):
        joints, loaded_kind = load_dance_file(generated_dir / name)
        assert loaded_kind == kind and joints.shape == (180, 24, 3) and joints.dtype == np.float32
        np.testing.assert_allclose(joints, in_memory[name[0]], atol=1e-6)


def test_unsafe_or_parameter_pickles_are_refused(tmp_path, capsys):
    from e3d2_hf.utils import E3D2Error

    smpl = tmp_path / "x.pkl"
    smpl.write_bytes(pickle.dumps({"smpl_poses": np.zeros((5, 72)), "smpl_trans": np.zeros((5, 3))}))
    with pytest.raises(E3D2Error, match="SMPL parameters"):
        load_dance_file(smpl)
    evil = tmp_path / "evil.pkl.npy"
    np.save(evil, {"pred_position": np.zeros((5, 72)), "extra": collections.Counter()})  # not an allowed global
    with pytest.raises(E3D2Error, match="evil.pkl.npy"):
        load_dance_file(evil)


def test_evaluate_module_loads_offline_and_matches_the_api(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    generated, truth = _dances(2, 3, 150), _dances(3, 4, 150)
    beats = [np.arange(10, 150, 25) for _ in generated]
    metric = evaluate.load(EVALUATE_MODULE_PATH, keep_in_memory=True)
    results = metric.compute(predictions=generated, ground_truth=truth, music_beats=beats)
    expected = evaluate_dances({f"prediction[{i}]": joints for i, joints in enumerate(generated)}, truth,
                               {f"prediction[{i}]": track for i, track in enumerate(beats)})  # fmt: skip
    assert results == pytest.approx(expected)


def _write_prepared_dataset(folder, clips: dict[str, np.ndarray], beat_every: int = 30) -> None:
    """A prepared dataset folder (as `e3d2 prepare` writes it) holding `clips`, one-hot beats every `beat_every` frames."""
    import datasets

    from e3d2_hf.data.prepare import dataset_features
    from e3d2_hf.data.music import BEAT_COLUMN, MUSIC_FEATURE_DIM

    names = list(clips)
    splits = {"train": names[:-2], "val": names[-2:-1], "test": names[-1:]}
    parts = {}
    for split, split_names in splits.items():
        rows = {column: [] for column in ("name", "music_id", "genre", "joints", "music_features", "music_features_7p5")}
        for name in split_names:
            music = np.zeros((len(clips[name]), MUSIC_FEATURE_DIM), dtype=np.float32)
            music[::beat_every, BEAT_COLUMN] = 1.0
            rows["name"].append(name)
            rows["music_id"].append("mBR0")
            rows["genre"].append("BR")
            rows["joints"].append(clips[name])
            rows["music_features"].append(music)
            rows["music_features_7p5"].append(music[::8])
        parts[split] = datasets.Dataset.from_dict(rows, features=dataset_features())
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    (folder / "manifest.json").write_text(json.dumps({"source": {"kind": "test"}}))


def test_ground_truth_against_itself_from_a_prepared_dataset(tmp_path, capsys):
    clips = {f"gBR_sBM_cAll_d04_mBR0_ch{index:02d}": joints for index, joints in enumerate(_dances(4, 5, 200))}
    _write_prepared_dataset(tmp_path / "data", clips)
    out = tmp_path / "gt_vs_gt.json"
    code = main(["metrics", "--generated", str(tmp_path / "data"), "--ground-truth", str(tmp_path / "data"), "--json", str(out)])
    assert code == 0
    assert "prepared dataset, all splits, music beats from its features" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert abs(report["FID_k"]) < 1e-3 and abs(report["FID_g"]) < 1e-3
    assert report["Div_k"] == pytest.approx(report["Div_k_gt"]) and report["Div_g"] == pytest.approx(report["Div_g_gt"])
    beats = {name: np.arange(0, 200, 30) for name in clips}
    assert report["BAS"] == pytest.approx(evaluate_dances(clips, clips, beats)["BAS"])


def test_a_prepared_ground_truth_is_table_1s_reference_set(tmp_path, capsys):
    """`e3d2 metrics --ground-truth RUN/data` compares with the motions outside the splits too, as Table 1 does."""
    from e3d2_hf.data.prepare import REFERENCE_MOTIONS, write_reference_motions

    dances = _dances(7, 5, 200)
    clips = {f"gBR_sBM_cAll_d04_mBR0_ch{index:02d}": joints for index, joints in enumerate(dances[:4])}
    _write_prepared_dataset(tmp_path / "data", clips)
    write_reference_motions(tmp_path / "data" / REFERENCE_MOTIONS, {"gBR_sBM_cAll_d05_mBR0_ch09": dances[4]})
    out = tmp_path / "report.json"
    assert main(["metrics", "--generated", str(tmp_path / "data"), "--ground-truth", str(tmp_path / "data"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ground truth: 5 clips" in printed and "generated: 4 clips" in printed
    assert f"its reference set, every motion whole ({REFERENCE_MOTIONS} and the splits)" in printed
    assert json.loads(out.read_text())["FID_k"] > 1e-3  # the fifth motion moves the reference away from the four


def test_music_folder_finds_audio_by_clip_name_or_music_id(folders, tmp_path, monkeypatch, capsys):
    from e3d2_hf.data import music

    generated_dir, truth_dir, beats_dir, *_ = folders
    for name in "abcd":
        (generated_dir / f"{name}.npy").unlink(missing_ok=True)
    for name in ("c.pkl", "d.pkl.npy", "e.pkl"):
        (generated_dir / name).unlink()
    np.save(generated_dir / "gBR_sBM_cAll_d04_mBR0_ch01.npy", _dances(5, 1, 180)[0])
    np.save(generated_dir / "solo.npy", _dances(6, 1, 180)[0])
    music_dir = tmp_path / "music"
    music_dir.mkdir()
    (music_dir / "mBR0.wav").write_bytes(b"")  # by music id
    (music_dir / "solo.ogg").write_bytes(b"")  # by clip name
    asked = []

    def fake_music_beats(path, fps=60.0):
        asked.append((path.name, fps))
        track = np.zeros(180, dtype=np.float32)
        track[15::30] = 1
        return track

    monkeypatch.setattr(music, "music_beats", fake_music_beats)
    code = main(["metrics", "--generated", str(generated_dir), "--ground-truth", str(truth_dir), "--music", str(music_dir), "--fps", "30"])
    assert code == 0, capsys.readouterr().err
    assert sorted(asked) == [("mBR0.wav", 30.0), ("solo.ogg", 30.0)]
    (music_dir / "solo.ogg").unlink()
    assert main(["metrics", "--generated", str(generated_dir), "--ground-truth", str(truth_dir), "--music", str(music_dir)]) == 2
    assert "--music" in capsys.readouterr().err


def _edge_pfc(full_pose: np.ndarray) -> float:
    """EDGE's eval/eval_pfc.py on one clip as metrics.md describes it: z up, 30 fps, the whole clip."""
    dt = 1.0 / 30.0
    root_velocity = (full_pose[1:, 0] - full_pose[:-1, 0]) / dt
    root_acceleration = (root_velocity[1:] - root_velocity[:-1]) / dt
    root_acceleration[:, 2] = np.maximum(root_acceleration[:, 2], 0.0)
    acceleration = np.linalg.norm(root_acceleration, axis=-1)
    acceleration /= acceleration.max()
    feet = full_pose[:, [7, 10, 8, 11]][:, :, :2]
    foot_speed = np.linalg.norm(feet[2:] - feet[1:-1], axis=-1)
    left, right = foot_speed[:, :2].min(axis=1), foot_speed[:, 2:].min(axis=1)
    return float((left * right * acceleration).mean())


def test_pfc_of_edge_files_is_the_number_edge_prints(tmp_path, capsys):
    """EDGE's outputs (full_pose, 30 fps, z up, 5 s here): the whole clips at their own rate, not upsampled nor cut."""
    rng = np.random.default_rng(4)
    edge_dir, truth_dir = tmp_path / "edge", tmp_path / "gt"
    edge_dir.mkdir(), truth_dir.mkdir()
    poses = []
    for index in range(3):
        joints = random_dance(rng, 150, wobble=0.01, travel=0.02)  # a wandering root, drifting feet
        poses.append(_z_up(joints))
        (edge_dir / f"clip{index}.pkl").write_bytes(pickle.dumps({"full_pose": poses[-1], "smpl_trans": np.zeros((150, 3))}))
    for index, joints in enumerate(_dances(5, 4, 240)):
        np.save(truth_dir / f"gt{index}.npy", joints)
    out = tmp_path / "edge.json"
    assert main(["metrics", "--generated", str(edge_dir), "--ground-truth", str(truth_dir), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    expected = np.mean([_edge_pfc(pose) for pose in poses]) * 1e4
    report = json.loads(out.read_text())
    assert report["PFC"] == pytest.approx(expected, rel=1e-5) and report["protocol"]["fps"] == 30.0
    method_row = next(line for line in printed.splitlines() if line.startswith("edge "))
    assert method_row.split()[-1] == f"{expected:.4f}" and "read at 30 fps" in printed
