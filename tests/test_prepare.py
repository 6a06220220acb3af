"""`e3d2 prepare` end to end: AIST++-format files written here, bad input, and the synthetic default."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import pickle
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from e3d2_hf.cli import main
from e3d2_hf.data import aistpp, music
from e3d2_hf.data import prepare as build
from e3d2_hf.metrics import MetricWarning
from e3d2_hf.utils import E3D2Error, file_sha256

from conftest import one_error_line

SAMPLE_RATE = 22050
NAMES = {
    "train": ["gBR_sBM_cAll_d04_mBR0_ch01", "gPO_sBM_cAll_d10_mPO1_ch02"],
    "val": ["gBR_sFM_cAll_d05_mBR0_ch03"],
    "test": ["gPO_sFM_cAll_d11_mPO1_ch04"],
}
MUSIC_SECONDS = {"mBR0": 3.0, "mPO1": 2.5}


@pytest.fixture(autouse=True)
def isolated_feature_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E3D2_CACHE", str(tmp_path / "cache"))


def write_click_track(path: Path, seconds: float, bpm: float) -> None:
    """Clicks on the beat over a low tone, so that onsets, beats and chroma all have something to find."""
    time = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    audio = 0.1 * np.sin(2 * np.pi * 110.0 * time)
    for beat in np.arange(0.0, seconds, 60.0 / bpm):
        start = int(beat * SAMPLE_RATE)
        click = np.exp(-np.arange(800) / 120.0) * np.sin(2 * np.pi * 1500.0 * np.arange(800) / SAMPLE_RATE)
        audio[start : start + 800] += 0.8 * click[: len(audio) - start]
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio.astype(np.float32), SAMPLE_RATE)


def write_motion(path: Path, frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    motion = {
        "smpl_poses": rng.normal(scale=0.2, size=(frames, 72)).astype(np.float32),
        "smpl_trans": (rng.normal(size=(frames, 3)) * 90.0).astype(np.float32),
        "smpl_scaling": np.array([90.0], dtype=np.float32),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(motion))


def write_aistpp(root: Path, names: dict[str, list[str]] = NAMES, frames: dict[str, int] | None = None) -> None:
    """A small AIST++ download: motions, split files, ignore list and music, in the real layout."""
    frames = frames or {}
    (root / "splits").mkdir(parents=True)
    for split, split_names in names.items():
        (root / "splits" / f"crossmodal_{split}.txt").write_text("\n".join(split_names) + "\n")
    (root / "ignore_list.txt").write_text("gBR_sBM_cAll_d99_mBR0_ch99\n")
    for index, name in enumerate(n for split_names in names.values() for n in split_names):
        music_id = aistpp.music_id_from_name(name)
        write_motion(root / "motions" / f"{name}.pkl", frames.get(name, int(MUSIC_SECONDS.get(music_id, 2.0) * 60)), seed=index)
    for music_id, seconds in MUSIC_SECONDS.items():
        write_click_track(root / "wavs" / f"{music_id}.wav", seconds, bpm=120.0)


def test_prepare_aistpp_end_to_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "aist"
    long_name = NAMES["train"][1]
    write_aistpp(root, frames={long_name: 5 * 60})  # motion 2.5 s longer than its music: cut, with a warning
    out = tmp_path / "run" / "data"
    assert main(["prepare", "--aistpp", str(root), "--out", str(out)]) == 0
    dataset = build.load_prepared(out).with_format("numpy")
    assert {split: list(dataset[split]["name"]) for split in aistpp.SPLITS} == NAMES
    assert f"{long_name}: motion has 300 frames, music" in caplog.text

    for split in aistpp.SPLITS:
        for row in dataset[split]:
            sequence = next(s for s in aistpp.read_split(root, split) if s.name == row["name"])
            frames = len(row["joints"])
            features_60 = music.music_features(sequence.music_path, fps=60.0)
            features_7p5 = music.music_features(sequence.music_path, fps=7.5)
            assert frames == min(len(features_60), int(MUSIC_SECONDS[sequence.music_id] * 60) if row["name"] != long_name else 300)
            assert row["genre"] == sequence.genre and row["music_id"] == sequence.music_id
            assert row["joints"].shape == (frames, 24, 3) and row["joints"].dtype == np.float32
            np.testing.assert_array_equal(row["joints"], aistpp.motion_joints(sequence.motion_path)[:frames])
            np.testing.assert_array_equal(row["music_features"], features_60[:frames])
            assert row["music_features_7p5"].shape == (math.ceil(frames / 8), music.MUSIC_FEATURE_DIM)
            steps = min(len(features_7p5), math.ceil(frames / 8))
            np.testing.assert_array_equal(row["music_features_7p5"][:steps], features_7p5[:steps])

    manifest = json.loads((out / build.MANIFEST_NAME).read_text())
    assert manifest["source"]["kind"] == "aistpp" and manifest["fps"] == 60.0 and manifest["skipped"] == 0
    assert {split: info["sequences"] for split, info in manifest["splits"].items()} == {"train": 2, "val": 1, "test": 1}
    assert manifest["inputs_sha256"]["music"]["mBR0"] == file_sha256(root / "wavs" / "mBR0.wav")
    assert manifest["inputs_sha256"]["motions"][long_name] == file_sha256(root / "motions" / f"{long_name}.pkl")
    assert sorted(path.name for path in out.parent.iterdir()) == ["data"]  # no temporary folders left behind


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-prepare",))


def test_bad_sequences_among_many_are_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    names = {**NAMES, "train": NAMES["train"] + ["gBR_sBM_cAll_d06_mBR9_ch05", "gBR_sBM_cAll_d07_mBR0_ch06"]}
    root = tmp_path / "aist"
    write_aistpp(root, names=names)  # mBR9 has no music file
    (root / "motions" / "gBR_sBM_cAll_d07_mBR0_ch06.pkl").write_bytes(pickle.dumps({"smpl_poses": _RunsCode()}))
    out = build.prepare_dataset(tmp_path / "data", aistpp_dir=root)
    manifest = build.load_manifest(out)
    assert manifest["skipped"] == 2 and manifest["splits"]["train"]["sequences"] == 2
    reasons = {entry["name"]: entry["reason"] for entry in manifest["skipped_sequences"]}
    assert reasons["gBR_sBM_cAll_d06_mBR9_ch05"].endswith("mBR9.wav: music file not found (needed by gBR_sBM_cAll_d06_mBR9_ch05)")
    assert "unsafe or corrupt pickle" in reasons["gBR_sBM_cAll_d07_mBR0_ch06"]
    assert not (tmp_path / "pwned-by-prepare").exists()
    assert list(build.load_prepared(out)["train"]["name"]) == NAMES["train"]


def test_bad_input_is_one_error_line_and_no_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "aist"
    write_aistpp(root)
    out = tmp_path / "data"

    (root / "wavs" / "mPO1.wav").write_bytes(b"RIFF\x00\x00garbage, not audio")  # corrupt: test split has no usable sequence
    assert main(["prepare", "--aistpp", str(root), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("e3d2 prepare: error: split ") and "mPO1.wav" in error
    assert not out.exists() and not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temp folders

    (root / "wavs" / "mPO1.wav").write_bytes(b"")  # empty audio
    assert main(["prepare", "--aistpp", str(root), "--out", str(out)]) == 2
    assert "mPO1.wav" in capsys.readouterr().err and not out.exists()

    (root / "splits" / "crossmodal_val.txt").unlink()
    assert main(["prepare", "--aistpp", str(root), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("crossmodal_val.txt: file not found") and not out.exists()


def test_failed_prepare_keeps_the_previous_complete_dataset(tmp_path: Path) -> None:
    root = tmp_path / "aist"
    write_aistpp(root)
    out = build.prepare_dataset(tmp_path / "data", aistpp_dir=root)
    before = build.load_manifest(out)
    (root / "motions" / f"{NAMES['val'][0]}.pkl").write_bytes(b"\x80\x04broken")
    with pytest.raises(E3D2Error, match="split 'val': none of its 1 sequences could be read"):
        build.prepare_dataset(out, aistpp_dir=root)
    assert build.load_manifest(out) == before and len(build.load_prepared(out)["val"]) == 1


def test_load_prepared_refuses_missing_or_incomplete(tmp_path: Path) -> None:
    with pytest.raises(E3D2Error, match="prepared dataset not found"):
        build.load_prepared(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(E3D2Error, match="incomplete prepared dataset"):
        build.load_prepared(tmp_path / "half")


def test_align_streams_cuts_and_pads(caplog: pytest.LogCaptureFixture) -> None:
    joints = np.zeros((100, 24, 3), np.float32)
    features = np.arange(97 * 438, dtype=np.float32).reshape(97, 438)
    low = np.arange(12 * 438, dtype=np.float32).reshape(12, 438)
    cut_joints, cut_features, cut_low = build.align_streams("seq", joints, features, low)
    assert len(cut_joints) == len(cut_features) == 97 and len(cut_low) == 13  # ceil(97 / 8)
    np.testing.assert_array_equal(cut_low[12], low[11])  # one short: last frame repeated
    assert "seq" not in caplog.text
    build.align_streams("seq", np.zeros((200, 24, 3)), features, low)
    assert "seq: motion has 200 frames, music 97" in caplog.text


def test_prepare_synthetic_default(tmp_path: Path) -> None:
    out = tmp_path / "run" / "data"
    assert main(["prepare", "--synthetic", "6", "--seed", "3", "--out", str(out)]) == 0
    manifest = build.load_manifest(out)
    plan = {"sequences": 6, "heldout_pieces": None, "seconds": [8.0, 16.0], "heldout_seconds": None}
    assert manifest["source"] == {"kind": "synthetic", "dir": str(tmp_path / "run" / "data_raw"), "num_sequences": 6, "seed": 3, "plan": plan}
    assert manifest["skipped"] == 0 and sum(info["sequences"] for info in manifest["splits"].values()) == 6
    assert manifest["versions"]["numpy"] == np.__version__ and manifest["versions"]["python"] == platform.python_version()
    dataset = build.load_prepared(out).with_format("numpy")
    row = dataset["train"][0]
    frames = len(row["joints"])
    assert frames > 60 and row["music_features"].shape == (frames, 438)
    assert row["music_features_7p5"].shape == (math.ceil(frames / 8), 438) and row["genre"]
    assert np.isfinite(row["joints"]).all() and np.abs(row["music_features"][:, music.BEAT_COLUMN]).sum() > 0


def test_a_read_only_out_is_one_error_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "aist"
    write_aistpp(root)
    out = tmp_path / "data"

    def read_only(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".data.tmp-x"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert main(["prepare", "--aistpp", str(root), "--out", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("e3d2 prepare")]
    assert lines == [f"e3d2 prepare: error: {out}: cannot write (Read-only file system)"]  # not the hidden staging folder
    assert not out.exists()
    out.write_text("my notes")  # once silently replaced by the dataset folder
    assert main(["prepare", "--aistpp", str(root), "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err, "e3d2 prepare: error: ") == f"e3d2 prepare: error: {out}: is a file, not a folder"
    assert out.read_text() == "my notes"


def test_the_reference_set_is_every_motion_minus_the_ignore_list_at_full_length(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Bailando's FID/Div reference (extract_aist_features.py): every sequence of the release, not only the splits' ones."""
    from e3d2_hf.rl.heldout import GroundTruth

    root = tmp_path / "aist"
    long_name, outside, ignored = NAMES["train"][1], "gJB_sFM_cAll_d01_mJB0_ch05", "gBR_sBM_cAll_d99_mBR0_ch99"
    write_aistpp(root, frames={long_name: 5 * 60})  # its music is 2.5 s: the split's row is cut, the reference keeps all 300 frames
    write_motion(root / "motions" / f"{outside}.pkl", 200, seed=7)  # in no split, and without music
    write_motion(root / "motions" / f"{ignored}.pkl", 200, seed=8)  # on the ignore list
    out = build.prepare_dataset(tmp_path / "data", aistpp_dir=root)
    data = build.load_prepared(out)
    dances = build.load_reference_dances(out, data)
    assert set(dances) == {name for names in NAMES.values() for name in names} | {outside}
    np.testing.assert_array_equal(dances[outside], aistpp.motion_joints(root / "motions" / f"{outside}.pkl"))
    assert len(dances[long_name]) == 300 and len(data["train"][1]["joints"]) < 300
    manifest = json.loads((out / build.MANIFEST_NAME).read_text())
    assert manifest["reference_set"]["sequences"] == 5 and manifest["reference_set"]["motions_outside_the_splits_or_cut"] == 2
    assert manifest["reference_set"]["list"].startswith("motions/*.pkl") and outside in manifest["inputs_sha256"]["motions"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # five random motions: constant features, as they should warn
        ground_truth = GroundTruth.from_prepared(data, out)
    assert len(ground_truth.features) == 5 and len(ground_truth.dances[long_name]) == 300

    (root / "cameras").mkdir()  # the release's list of sequences, as AISTDataset reads it, leaves `outside` out here
    (root / "cameras" / "mapping.txt").write_text("".join(f"{name} setting01\n" for names in NAMES.values() for name in names))
    again = build.prepare_dataset(tmp_path / "again", aistpp_dir=root)
    assert set(build.load_reference_dances(again, build.load_prepared(again))) == {name for names in NAMES.values() for name in names}
    (out / build.REFERENCE_MOTIONS).write_bytes(b"not a zip")
    with pytest.raises(E3D2Error, match=r"reference_motions.npz: not an .npz file of reference motions; prepare the data again"):
        build.load_reference_dances(out, data)
    for bad, problem in (
        (np.full((4, 24, 3), np.nan, np.float32), "has NaN or infinite joint positions"),
        (np.full((4, 24, 3), "x"), "holds <U1 values, not numbers"),
    ):
        build.write_reference_motions(out / build.REFERENCE_MOTIONS, {"gBR_sBM_cAll_d04_mBR0_ch99": bad})
        with pytest.raises(E3D2Error, match=rf"reference_motions.npz: motion 'gBR_sBM_cAll_d04_mBR0_ch99' {problem}; prepare the data again"):
            build.load_reference_dances(out, data)
    (out / build.REFERENCE_MOTIONS).unlink()  # a dataset prepared before the reference set had its folder: the splits alone
    with caplog.at_level(logging.WARNING):
        assert set(build.load_reference_dances(out, data)) == {name for names in NAMES.values() for name in names}
    assert "FID/Div compare with the splits' dances only" in caplog.text


def test_music_streams_are_the_same_computed_in_parallel_or_one_by_one_and_name_a_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = []
    for index, bpm in enumerate((90.0, 120.0, 150.0)):
        paths.append(tmp_path / f"m{index}.wav")
        write_click_track(paths[-1], 2.0, bpm)
    paths.append(tmp_path / "corrupt.wav")
    paths[-1].write_bytes(b"RIFF\x00\x00garbage, not audio")
    filters = list(warnings.filters)
    one_by_one = build.music_streams_of(paths, feature_cache=False, feature_threads=1)
    in_parallel = build.music_streams_of(paths + paths[:1], feature_cache=True, feature_threads=3)  # a file listed twice: computed once
    assert warnings.filters == filters  # threads silencing warnings leave no filter behind
    assert list(in_parallel) == [str(path) for path in paths]
    for path in paths[:3]:
        for a, b in zip(one_by_one[str(path)], in_parallel[str(path)]):
            assert a.shape[1] == music.MUSIC_FEATURE_DIM and np.array_equal(a, b)
    assert isinstance(in_parallel[str(paths[3])], E3D2Error) and "corrupt.wav" in str(in_parallel[str(paths[3])])

    def no_computing(*args, **kwargs):
        raise AssertionError("cached features were computed again")

    monkeypatch.setattr(music, "extract_music_features", no_computing)
    cached = build.music_streams_of(paths[:3], feature_cache=True, feature_threads=2)
    assert all(np.array_equal(a, b) for path in paths[:3] for a, b in zip(cached[str(path)], one_by_one[str(path)]))
    with pytest.raises(E3D2Error, match="feature_threads must be at least 1"):
        build.music_streams_of(paths, feature_threads=0)


def test_feature_threads_is_no_reason_to_prepare_again() -> None:
    from e3d2_hf.recipe import stage_values

    assert stage_values(build.PrepareConfig(feature_threads=1)) == stage_values(build.PrepareConfig())
    assert stage_values(build.PrepareConfig(seed=1)) != stage_values(build.PrepareConfig())
