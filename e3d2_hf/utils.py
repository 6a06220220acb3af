"""Small shared helpers: user-facing errors, safe unpickling, atomic writes, content hashes.

Every module that reads user files or writes results goes through these, so that bad input
fails the same way everywhere (one line naming the file) and no half-written output is ever
mistaken for a finished one.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import logging
import math
import os
import pickle
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


class E3D2Error(Exception):
    """An error caused by the user's input; the CLI prints it as one line, without a traceback."""


# --------------------------------------------------------------------------------------------
# Numbers from users. `x <= 0` is False for NaN, and inf passes it too, so every number a user
# gives (a command-line option, a recipe field) goes through this one check.
# --------------------------------------------------------------------------------------------
def finite_number(value: Any, what: str, *, positive: bool = False) -> float:
    """`value` as a float when it is a finite number (and > 0 if `positive`); `E3D2Error` naming `what` otherwise."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise E3D2Error(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise E3D2Error(f"{what} must be a finite number, got {value!r}")
    if positive and number <= 0:
        raise E3D2Error(f"{what} must be positive, got {value!r}")
    return number


def _number_argument(positive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return finite_number(text, "the value", positive=positive)
        except E3D2Error as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("the value ", "")) from None

    parse.__name__ = "positive number" if positive else "finite number"
    return parse


def non_finite_fields(config: Any) -> list[str]:
    """One problem per float field of a dataclass (or element of a list of floats) that is NaN or infinite."""
    import dataclasses

    problems = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(number, float):
                try:
                    finite_number(number, field.name)
                except E3D2Error as exc:
                    problems.append(str(exc))
                    break
    return problems


# argparse `type=`s: reject NaN and inf (and, for the second, zero and negatives) with one line.
finite_float = _number_argument(positive=False)
positive_float = _number_argument(positive=True)


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


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """`path` when it is a file; `E3D2Error` saying it is a folder, or that there is no such `what`."""
    path = Path(path)
    if path.is_dir():
        raise E3D2Error(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise E3D2Error(f"{path}: no such {what}")
    return path


def numpy_file_kind(path: str | os.PathLike) -> str | None:
    """"npy" or "npz" by the file's first bytes (not its name), None for anything else; `E3D2Error` if unreadable.

    `np.load` of a file that is neither tries to unpickle it, and its message then suggests
    loading it unsafely; callers refuse such a file by its kind instead.
    """
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    return "npy" if magic == b"\x93NUMPY" else "npz" if magic[:4] in (b"PK\x03\x04", b"PK\x05\x06") else None  # an empty npz: its end record alone


# --------------------------------------------------------------------------------------------
# Atomic writes: write into a temporary sibling, then rename, so a killed process leaves either
# the old result or the new one, never a half-written one. The sibling's name carries the writer's
# host and process id; what a dead writer left behind is swept by the next write in that folder.
# A failure to write (read-only, full disk) is an `E3D2Error` naming the target, not the sibling.
# --------------------------------------------------------------------------------------------
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-")


def _sibling_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{_HOST}-{os.getpid()}-"


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_leftovers(folder: Path) -> None:
    """Remove the temporary siblings that dead writers on this host left in `folder`.

    An `.old-` sibling whose target is missing (the writer died between its two renames) is the
    previous result: it is put back rather than removed.
    """
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            found = _LEFTOVER.match(entry.name)
            if not found or found["host"] != _HOST or _process_is_alive(int(found["pid"])):
                continue
            with contextlib.suppress(OSError):
                original = folder / found["name"]
                if found["kind"] == "old" and not original.exists():
                    os.replace(entry, original)
                elif entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _write_error(target: Path, exc: OSError) -> E3D2Error:
    return E3D2Error(f"{target}: cannot write ({exc.strerror or exc})")


def _is_inside(path: str | os.PathLike | None, folder: Path) -> bool:
    return path is None or Path(path) == folder or folder in Path(path).parents


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` only if the block finishes."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise E3D2Error(f"{target}: is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_sibling_prefix(target, "tmp"), dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    except OSError as exc:
        raise _write_error(target, exc) from exc
    try:
        yield tmp
        if target.exists():
            if not overwrite:
                raise E3D2Error(f"{target}: already exists")
            old = Path(tempfile.mkdtemp(prefix=_sibling_prefix(target, "old"), dir=target.parent))
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno not in _FULL_OR_READ_ONLY and not _is_inside(exc.filename, tmp) and not _is_inside(exc.filename, target):
            raise  # not this write's failure (e.g. reading an input inside the block)
        raise _write_error(target, exc) from exc
    except E3D2Error as exc:  # name the result, never the hidden sibling
        shutil.rmtree(tmp, ignore_errors=True)
        raise E3D2Error(str(exc).replace(str(tmp), str(target))) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary sibling of `target` for writing; rename it over `target` on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=_sibling_prefix(target, "tmp"), dir=target.parent)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
    except OSError as exc:
        raise _write_error(target, exc) from exc
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _write_error(target, exc) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling path of `target` with its suffix (for writers that take a path, as ffmpeg does),
    renamed over `target` only if the block finishes."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(target.parent)
        fd, name = tempfile.mkstemp(prefix=_sibling_prefix(target, "tmp"), suffix=target.suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, target)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    except E3D2Error as exc:  # name the result, never the hidden sibling
        raise E3D2Error(str(exc).replace(str(tmp), str(target))) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# --------------------------------------------------------------------------------------------
# One run folder, one writer: a lock file held with flock(2), which the kernel releases when its
# process ends, however it ends, so a killed run never leaves the folder locked.
# --------------------------------------------------------------------------------------------
LOCK_FILE = ".e3d2.lock"
_held_locks: dict[Path, int] = {}


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's lock for the block; `E3D2Error` when another process holds it.

    Re-entrant within a process (the pipeline holds it while its stages run). Of a launch of
    several processes only rank 0 takes it: the ranks of one launch are one writer.
    """
    import fcntl

    folder = Path(folder)
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = folder.resolve()
        if key in _held_locks:
            handle = None
        else:
            handle = open(folder / LOCK_FILE, "a+")
    except OSError as exc:
        raise E3D2Error(f"{folder}: cannot use the run folder ({exc.strerror or exc})") from exc
    if handle is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise E3D2Error(f"{folder}: {holder} is writing this run folder; wait for it to end (or stop it) and run again") from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
    _held_locks[key] = _held_locks.get(key, 0) + 1
    try:
        yield
    finally:
        _held_locks[key] -= 1
        if not _held_locks[key]:
            del _held_locks[key]
            if handle is not None:
                handle.close()  # closing releases the lock


# --------------------------------------------------------------------------------------------
# Content hashes and the cache folder.
# --------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (the cache key for anything derived from the file)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(chunk_size), b""):
                digest.update(chunk)
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """Hex SHA-256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cache_dir(kind: str) -> Path | None:
    """Folder for derived data that is safe to delete (`$E3D2_CACHE` or ~/.cache/e3d2_hf).

    None, with one warning, when it cannot be made (a read-only home, common in containers): the
    cache only saves time, so nothing stops for it.
    """
    try:
        root = Path(os.environ.get("E3D2_CACHE") or Path.home() / ".cache" / "e3d2_hf")
        path = root / kind
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: no home directory
        _warn_cache_once(f"{os.environ.get('E3D2_CACHE') or '~'}/{kind}", f"cache folder for {kind} unusable ({getattr(exc, 'strerror', None) or exc}); computing without a cache")
        return None
    return path


def read_cached_array(path: Path | None, valid: Callable[[np.ndarray], bool]) -> np.ndarray | None:
    """A cached array, or None when there is none or it is unreadable or not `valid` (it is then recomputed)."""
    if path is None or not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return array if isinstance(array, np.ndarray) and valid(array) else None


def write_cached_array(path: Path | None, array: np.ndarray) -> None:
    """Store a cache entry atomically; a cache that cannot be written (read-only, full disk) only warns, once."""
    if path is None:
        return
    try:
        with atomic_file(path) as handle:
            np.save(handle, array, allow_pickle=False)
    except E3D2Error as exc:
        _warn_cache_once(str(path.parent), f"{exc}; going on without caching")


_cache_warnings: set[str] = set()


def _warn_cache_once(folder: str, message: str) -> None:
    """One warning per cache folder and process, not one per entry."""
    if folder not in _cache_warnings:
        _cache_warnings.add(folder)
        logging.getLogger(__name__).warning(message)
