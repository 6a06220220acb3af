"""Shared helpers: safe unpickling refuses code, atomic writes never leave half a result."""

import os
import pickle

import numpy as np
import pytest

from e3d2_hf.utils import E3D2Error, array_sha256, atomic_directory, atomic_file, file_sha256, safe_load_pickle


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
