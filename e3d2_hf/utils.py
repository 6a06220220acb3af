"""Small shared helpers: user-facing errors, safe unpickling, atomic writes, content hashes.

Every module that reads user files or writes results goes through these, so that bad input
fails the same way everywhere (one line naming the file) and no half-written output is ever
mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class E3D2Error(Exception):
    """An error caused by the user's input; the CLI prints it as one line, without a traceback."""


# --------------------------------------------------------------------------------------------
# Safe unpickling. AIST++ motions and other methods' outputs (Bailando, EDGE) are pickles; a
# plain `pickle.load` would run any code a file asks for. This unpickler only rebuilds numpy
# arrays, numpy scalars and plain containers.
# --------------------------------------------------------------------------------------------
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' (only numpy arrays and plain containers are allowed)")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may only contain numpy arrays and plain containers.

    Raises `E3D2Error` naming the file when it is unreadable, corrupt or asks for any other
    object (for example a pickle crafted to run code).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise E3D2Error(f"{path}: unsafe or corrupt pickle: {exc}") from exc
    except Exception as exc:  # truncated files raise EOFError, ValueError, ...
        raise E3D2Error(f"{path}: corrupt pickle ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------
# Atomic writes: write into a temporary sibling, then rename, so a killed process leaves either
# the old result or the new one, never a half-written one.
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` only if the block finishes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise E3D2Error(f"{target}: already exists")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary sibling of `target` for writing; rename it over `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# Content hashes and the cache folder.
# --------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (the cache key for anything derived from the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """Hex SHA-256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def cache_dir(kind: str) -> Path:
    """Folder for derived data that is safe to delete (`$E3D2_CACHE` or ~/.cache/e3d2_hf)."""
    root = Path(os.environ.get("E3D2_CACHE", Path.home() / ".cache" / "e3d2_hf"))
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
