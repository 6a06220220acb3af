"""Shared helpers: safe unpickling refuses code, atomic writes never leave half a result (nor leftovers), numbers are finite, one writer per run folder, the cache is optional."""

import argparse
import errno
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from e3d2_hf.utils import (
    E3D2Error,
    array_sha256,
    atomic_directory,
    atomic_file,
    cache_dir,
    file_sha256,
    finite_float,
    finite_number,
    positive_float,
    read_cached_array,
    run_lock,
    safe_load_pickle,
    write_cached_array,
)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_safe_pickle_loads_arrays_and_containers(tmp_path):
    payload = {"smpl_poses": np.zeros((3, 72), np.float32), "meta": [1, 2.0, "x", (3,)], "scalar": np.float64(2.5)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(payload))
    loaded = safe_load_pickle(path)
    np.testing.assert_array_equal(loaded["smpl_poses"], payload["smpl_poses"])
    assert loaded["meta"] == payload["meta"] and loaded["scalar"] == 2.5


def test_safe_pickle_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"smpl_poses": RunsCode()}))
    with pytest.raises(E3D2Error, match="evil.pkl.*refusing"):
        safe_load_pickle(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage"])
def test_safe_pickle_names_corrupt_file(tmp_path, content):
    path = tmp_path / "broken.pkl"
    path.write_bytes(content)
    with pytest.raises(E3D2Error, match="broken.pkl"):
        safe_load_pickle(path)


def test_atomic_directory_keeps_old_result_when_interrupted(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "w.bin"
    with atomic_file(target) as handle:
        handle.write(b"good")
    with pytest.raises(ValueError):
        with atomic_file(target) as handle:
            handle.write(b"bad")
            raise ValueError
    assert target.read_bytes() == b"good"
    assert file_sha256(target) == file_sha256(target)
    assert array_sha256(np.zeros(3)) != array_sha256(np.zeros(4))


# ----------------------------------------------------------------------------------------------
# Numbers from users: NaN and inf pass `x <= 0`, so one check is used everywhere
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), float("inf"), "fast", None, True])
def test_finite_number_refuses_what_is_not_one(value):
    with pytest.raises(E3D2Error, match="--seconds must be a"):
        finite_number(value, "--seconds")
    with pytest.raises(argparse.ArgumentTypeError, match="must be a"):
        finite_float(str(value))


def test_finite_number_keeps_finite_ones_and_checks_the_sign():
    assert finite_number("1e-4", "x") == 1e-4 and finite_number(3, "x") == 3.0 and finite_float("-2") == -2.0
    assert positive_float("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="must be positive, got '0'"):
        positive_float("0")


# ----------------------------------------------------------------------------------------------
# Atomic outputs: one line naming the target on a read-only or full disk, leftovers of dead writers swept
# ----------------------------------------------------------------------------------------------
def test_a_read_only_or_full_disk_is_one_error_naming_the_target(tmp_path, monkeypatch):
    target = tmp_path / "data"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".data.tmp-x"))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkdtemp", read_only)
        with pytest.raises(E3D2Error, match=r"data: cannot write \(Read-only file system\)$"), atomic_directory(target):
            pass
    with pytest.raises(E3D2Error) as error, atomic_directory(target) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "train" / "data.arrow"))
    assert str(error.value) == f"{target}: cannot write (No space left on device)" and ".tmp-" not in str(error.value)
    with pytest.raises(E3D2Error, match=r"w.bin: cannot write \(No space left on device\)"), atomic_file(tmp_path / "w.bin"):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(E3D2Error, match=f"^{target}/song.mp4: ffmpeg failed$"), atomic_directory(target) as tmp:
        raise E3D2Error(f"{tmp}/song.mp4: ffmpeg failed")  # an error about the hidden folder names the result
    assert list(tmp_path.iterdir()) == []


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_killed_writer_are_swept_by_the_next_write(tmp_path):
    with atomic_directory(tmp_path / "checkpoint-000002") as tmp:
        (tmp / "a").write_text("kept")
    host = re.match(r"\.checkpoint-000002\.tmp-([0-9a-f]{6})-", tmp.name)[1]
    pid = dead_pid()
    (tmp_path / f".checkpoint-000004.tmp-{host}-{pid}-abc").mkdir()  # killed while writing its checkpoint
    (tmp_path / f".log.jsonl.tmp-{host}-{pid}-abc").write_text("half")
    (tmp_path / f".result.old-{host}-{pid}-abc").mkdir()  # killed between the two renames: the previous result
    live = tmp_path / f".other.tmp-{host}-{os.getpid()}-abc"
    live.mkdir()  # a writer still at work
    foreign = tmp_path / f".other.tmp-ffffff-{pid}-abc"
    foreign.mkdir()  # another host's, on a shared disk
    with atomic_file(tmp_path / "log.jsonl", "w") as handle:
        handle.write("{}\n")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(["checkpoint-000002", "log.jsonl", "result", live.name, foreign.name])
    assert (tmp_path / "checkpoint-000002" / "a").read_text() == "kept"


# ----------------------------------------------------------------------------------------------
# One run folder, one writer
# ----------------------------------------------------------------------------------------------
HOLDER = "import sys, time; from e3d2_hf.utils import run_lock\nwith run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"


def test_a_run_folder_has_one_writer_and_a_killed_one_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(E3D2Error, match=f"{tmp_path}: process {holder.pid} on .* is writing this run folder; wait for it"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path), run_lock(tmp_path):  # free again, and re-entrant (the pipeline holds it around its stages)
        pass


# ----------------------------------------------------------------------------------------------
# The cache is optional
# ----------------------------------------------------------------------------------------------
def test_an_unusable_cache_only_warns(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("E3D2_CACHE", str(blocker))  # a folder cannot be made inside a file: as a read-only cache
    with caplog.at_level(logging.WARNING):
        assert cache_dir("music_features") is None
        write_cached_array(None, np.zeros(3))
        entry = tmp_path / "entry.npy"
        monkeypatch.setattr(tempfile, "mkstemp", lambda **kwargs: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        write_cached_array(entry, np.zeros(3))
    assert "cache folder for music_features unusable" in caplog.text and "entry.npy: cannot write (No space left on device); going on without caching" in caplog.text
    assert not entry.exists()
    np.save(entry, np.zeros((3, 5)))
    assert read_cached_array(entry, lambda array: array.shape == (3, 438)) is None  # the wrong shape is recomputed
    entry.write_bytes(b"\x93NUMPY cut")
    assert read_cached_array(entry, lambda array: True) is None
