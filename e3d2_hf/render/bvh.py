"""BVH export and import for dances given as SMPL-24 joint positions.

The dance models produce joint positions only, while animation tools (Blender, MotionBuilder,
game engines) want a skeleton with per-joint rotations. `save_bvh` writes the rotations that
`e3d2_hf.motion.fitting` solves along the kinematic tree as a BVH file, and `load_bvh` /
`bvh_to_joints` read any BVH file back into joint positions.

Conventions: joints in SMPL order, metres, y up. BVH files carry no unit; ours are written in
centimetres and `load_bvh` assumes centimetres unless told otherwise. Rotation channels follow
the BVH definition: intrinsic, composed in the order the CHANNELS line lists them, in degrees.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e3d2_hf.motion.fitting import bone_offsets, check_joints, joints_to_rotations
from e3d2_hf.motion.rotations import euler_to_matrix, matrix_to_euler_zxy
from e3d2_hf.motion.skeleton import SMPL_CHILDREN, SMPL_JOINT_NAMES, chain_forward_kinematics
from e3d2_hf.utils import E3D2Error, atomic_file

BVH_UNITS_PER_METRE = 100.0  # save_bvh writes centimetres
ROOT_CHANNELS = ("Xposition", "Yposition", "Zposition", "Zrotation", "Xrotation", "Yrotation")
JOINT_CHANNELS = ("Zrotation", "Xrotation", "Yrotation")
END_SITE_FRACTION = 0.5  # a leaf's End Site continues its incoming bone by half that bone's length


def _depth_first(children: list[list[int]], joint: int = 0) -> list[int]:
    return [joint] + [descendant for child in children[joint] for descendant in _depth_first(children, child)]


SMPL_FILE_ORDER = _depth_first(SMPL_CHILDREN)  # BVH nests joints, so a file lists them depth first


def _resample(joints: np.ndarray, fps: float, target_fps: float) -> np.ndarray:
    """Linear interpolation of positions onto the target frame rate, keeping the first frame's time."""
    frames = int(np.floor((len(joints) - 1) * target_fps / fps + 1e-9)) + 1
    source_positions = np.arange(frames) * (fps / target_fps)
    lower = np.minimum(np.floor(source_positions).astype(int), len(joints) - 1)
    upper = np.minimum(lower + 1, len(joints) - 1)
    weight = (source_positions - lower)[:, None, None]
    return joints[lower] * (1.0 - weight) + joints[upper] * weight


# --------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------
def _format_numbers(values: np.ndarray) -> str:
    return " ".join(f"{value:.6f}" for value in values)


def _hierarchy_lines(joint: int, offsets_units: np.ndarray, depth: int) -> list[str]:
    indent = "  " * depth
    keyword = "ROOT" if joint == 0 else "JOINT"
    channels = ROOT_CHANNELS if joint == 0 else JOINT_CHANNELS
    lines = [
        f"{indent}{keyword} {SMPL_JOINT_NAMES[joint]}",
        f"{indent}{{",
        f"{indent}  OFFSET {_format_numbers(offsets_units[joint])}",
        f"{indent}  CHANNELS {len(channels)} {' '.join(channels)}",
    ]
    for child in SMPL_CHILDREN[joint]:
        lines += _hierarchy_lines(child, offsets_units, depth + 1)
    if not SMPL_CHILDREN[joint]:
        end_site = END_SITE_FRACTION * offsets_units[joint]
        lines += [
            f"{indent}  End Site",
            f"{indent}  {{",
            f"{indent}    OFFSET {_format_numbers(end_site)}",
            f"{indent}  }}",
        ]
    lines.append(f"{indent}}}")
    return lines


def save_bvh(
    path: str | os.PathLike,
    joints: np.ndarray,
    fps: float = 60.0,
    *,
    rest: np.ndarray | None = None,
    target_fps: float | None = None,
) -> Path:
    """Write SMPL-24 joints (T, 24, 3) in metres as a BVH file in centimetres; returns the path.

    Bones come from `bone_offsets` (the dance's own lengths), rotations from
    `joints_to_rotations`, written as Z X Y Euler channels (R = Rz @ Rx @ Ry). Angles are
    unwrapped over time so that tools interpolating between frames never spin the long way
    round. `target_fps` resamples the positions linearly before solving.
    """
    path = Path(path)
    joints = check_joints(joints, str(path))
    for name, rate in (("fps", fps), ("target_fps", target_fps)):
        if rate is not None and not (np.isfinite(rate) and rate > 0):
            raise E3D2Error(f"{path}: {name} must be a positive number, got {rate}")
    if target_fps is not None and target_fps != fps:
        joints, fps = _resample(joints, fps, target_fps), target_fps
    offsets = bone_offsets(joints, rest)
    root_translation, local_rotations = joints_to_rotations(joints, offsets=offsets)
    angles = np.degrees(np.unwrap(np.radians(matrix_to_euler_zxy(local_rotations[:, SMPL_FILE_ORDER])), axis=0))
    motion = np.concatenate([root_translation * BVH_UNITS_PER_METRE, angles.reshape(len(joints), -1)], axis=1)
    lines = ["HIERARCHY", *_hierarchy_lines(0, offsets * BVH_UNITS_PER_METRE, 0)]
    lines += ["MOTION", f"Frames: {len(motion)}", f"Frame Time: {1.0 / fps:.10g}"]
    lines += [_format_numbers(frame) for frame in motion]
    with atomic_file(path, "w") as handle:  # a write that fails is an E3D2Error naming `path`
        handle.write("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------------------------
@dataclass
class BVHMotion:
    """A parsed BVH file: the skeleton (End Sites dropped), the raw motion values and the frame rate.

    `offsets` are in metres; `motion` holds the values as written (file units and degrees),
    one column per channel in joint order; `metres_per_unit` converts its position channels.
    """

    names: list[str]
    parents: np.ndarray
    offsets: np.ndarray
    channels: list[tuple[str, ...]]
    motion: np.ndarray
    fps: float
    metres_per_unit: float


_CHANNEL_NAMES = {f"{axis}{kind}".lower(): f"{axis}{kind}" for axis in "XYZ" for kind in ("position", "rotation")}
_TOKEN = re.compile(r"[{}]|[^\s{}]+")


class _HierarchyParser:
    """Recursive descent over the HIERARCHY tokens, each kept with its line number for errors."""

    def __init__(self, path: Path, lines: list[str]):
        self.path = path
        self.tokens = [(match.group(), number) for number, line in enumerate(lines, 1) for match in _TOKEN.finditer(line)]
        self.position = 0
        self.names: list[str] = []
        self.parents: list[int] = []
        self.offsets: list[list[float]] = []
        self.channels: list[tuple[str, ...]] = []

    def error(self, message: str) -> E3D2Error:
        line = self.tokens[min(self.position, len(self.tokens) - 1)][1] if self.tokens else 1
        return E3D2Error(f"{self.path}: line {line}: {message}")

    def next(self, what: str) -> str:
        if self.position >= len(self.tokens):
            raise self.error(f"file ends where {what} was expected")
        token = self.tokens[self.position][0]
        self.position += 1
        return token

    def expect(self, keyword: str) -> None:
        token = self.next(f"'{keyword}'")
        if token.upper() != keyword.upper():
            self.position -= 1
            raise self.error(f"expected '{keyword}', got '{token}'")

    def number(self, what: str) -> float:
        token = self.next(what)
        try:
            value = float(token)
        except ValueError:
            self.position -= 1
            raise self.error(f"expected {what}, got '{token}'") from None
        if not np.isfinite(value):
            self.position -= 1
            raise self.error(f"{what} is not finite ('{token}')")
        return value

    def offset(self) -> list[float]:
        self.expect("OFFSET")
        return [self.number("an OFFSET value") for _ in range(3)]

    def parse(self) -> None:
        self.expect("HIERARCHY")
        self.expect("ROOT")
        self.joint(parent=-1)
        if self.position < len(self.tokens):
            raise self.error(f"expected MOTION after the root joint's closing brace, got '{self.tokens[self.position][0]}'")

    def joint(self, parent: int) -> None:
        name = self.next("a joint name")
        if name in ("{", "}"):
            self.position -= 1
            raise self.error("a joint name is missing")
        index = len(self.names)
        self.names.append(name)
        self.parents.append(parent)
        self.expect("{")
        self.offsets.append(self.offset())
        self.expect("CHANNELS")
        count = self.number("the channel count")
        if count != int(count) or count < 0:
            self.position -= 1
            raise self.error(f"channel count must be a whole number, got {count:g}")
        channels = []
        for _ in range(int(count)):
            token = self.next("a channel name")
            if token.lower() not in _CHANNEL_NAMES:
                self.position -= 1
                raise self.error(f"unknown channel '{token}' (expected e.g. Xposition or Zrotation)")
            channels.append(_CHANNEL_NAMES[token.lower()])
        self.channels.append(tuple(channels))
        while True:
            token = self.next("'JOINT', 'End Site' or '}'")
            if token == "}":
                return
            if token.upper() == "JOINT":
                self.joint(parent=index)
            elif token.upper() == "END":
                self.expect("Site")
                self.expect("{")
                self.offset()
                self.expect("}")
            else:
                self.position -= 1
                raise self.error(f"expected 'JOINT', 'End Site' or '}}', got '{token}'")


def _parse_motion(path: Path, lines: list[str], first_line: int, channel_count: int) -> tuple[np.ndarray, float]:
    """The MOTION section: 'Frames: N', 'Frame Time: dt', then N lines of `channel_count` numbers."""
    numbered = [(first_line + index, line.strip()) for index, line in enumerate(lines) if line.strip()]
    headers = [(r"Frames:\s*([0-9.eE+-]+)", "'Frames: N'"), (r"Frame\s+Time:\s*([0-9.eE+-]+)", "'Frame Time: seconds'")]
    values = []
    for index, (pattern, label) in enumerate(headers):
        if index >= len(numbered):
            raise E3D2Error(f"{path}: line {first_line + len(lines) - 1}: file ends where {label} was expected")
        number, text = numbered[index]
        match = re.fullmatch(pattern, text, flags=re.IGNORECASE)
        try:
            values.append(float(match.group(1)))
        except (AttributeError, ValueError):  # no match, or a malformed number such as '1e'
            raise E3D2Error(f"{path}: line {number}: expected {label}, got '{text[:40]}'") from None
    frames, frame_time = values
    if frames != int(frames) or frames < 0:
        raise E3D2Error(f"{path}: line {numbered[0][0]}: frame count must be a whole number, got {frames:g}")
    if not (np.isfinite(frame_time) and frame_time > 0):
        raise E3D2Error(f"{path}: line {numbered[1][0]}: frame time must be positive, got {frame_time:g}")
    frame_lines = numbered[2:]
    if len(frame_lines) != int(frames):
        where = frame_lines[-1][0] if frame_lines else numbered[1][0]
        raise E3D2Error(f"{path}: line {where}: 'Frames:' says {int(frames)} frames but {len(frame_lines)} frame lines follow")
    motion = np.empty((len(frame_lines), channel_count))
    for row, (number, text) in enumerate(frame_lines):
        fields = text.split()
        if len(fields) != channel_count:
            raise E3D2Error(f"{path}: line {number}: expected {channel_count} values per frame, got {len(fields)}")
        try:
            motion[row] = [float(field) for field in fields]
        except ValueError:
            raise E3D2Error(f"{path}: line {number}: frame values must be numbers") from None
    if not np.isfinite(motion).all():
        raise E3D2Error(f"{path}: motion contains NaN or infinite values")
    return motion, _frame_rate(frame_time)


def _frame_rate(frame_time: float) -> float:
    """1 / frame time, snapped to a whole rate when only the file's rounding of the time (often 6 digits) differs."""
    fps = 1.0 / frame_time
    return float(round(fps)) if abs(fps - round(fps)) < 1e-4 * fps else fps


def load_bvh(path: str | os.PathLike, *, metres_per_unit: float = 1.0 / BVH_UNITS_PER_METRE) -> BVHMotion:
    """Parse a BVH file. BVH has no unit field: `metres_per_unit` defaults to centimetres."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise E3D2Error(f"{path}: cannot read BVH file ({exc.strerror or exc})") from exc
    lines = text.splitlines()
    motion_line = next((index for index, line in enumerate(lines) if line.strip().upper() == "MOTION"), None)
    if motion_line is None:
        raise E3D2Error(f"{path}: line {len(lines)}: no MOTION section (not a BVH file, or cut short)")
    parser = _HierarchyParser(path, lines[:motion_line])
    parser.parse()
    channel_count = sum(len(channels) for channels in parser.channels)
    motion, fps = _parse_motion(path, lines[motion_line + 1 :], motion_line + 2, channel_count)
    return BVHMotion(
        names=parser.names,
        parents=np.array(parser.parents, dtype=np.int64),
        offsets=np.array(parser.offsets, dtype=np.float64) * metres_per_unit,
        channels=parser.channels,
        motion=motion,
        fps=fps,
        metres_per_unit=metres_per_unit,
    )


def bvh_to_joints(path_or_motion: str | os.PathLike | BVHMotion) -> tuple[np.ndarray, float]:
    """Joint positions (T, J, 3) in metres and the frame rate; End Sites are left out.

    Joints come in file order, except that a file whose joints are exactly the SMPL-24 ones
    (as `save_bvh` writes them, depth first) comes back in SMPL order, (T, 24, 3).

    Position channels replace the matching OFFSET components (as Blender reads them), so files
    that animate every joint's translation (Bandai-Namco) and those with root positions only
    both come out right. Rotation channels compose in their listed order.
    """
    motion = path_or_motion if isinstance(path_or_motion, BVHMotion) else load_bvh(path_or_motion)
    frames, count = len(motion.motion), len(motion.names)
    translations = np.broadcast_to(motion.offsets, (frames, count, 3)).copy()
    rotations = np.empty((frames, count, 3, 3))
    column = 0
    for joint, channels in enumerate(motion.channels):
        values = motion.motion[:, column : column + len(channels)]
        column += len(channels)
        rotation_axes = "".join(name[0] for name in channels if name.endswith("rotation"))
        rotation_columns = [index for index, name in enumerate(channels) if name.endswith("rotation")]
        rotations[:, joint] = euler_to_matrix(values[:, rotation_columns], rotation_axes)
        for index, name in enumerate(channels):
            if name.endswith("position"):
                translations[:, joint, "XYZ".index(name[0])] = values[:, index] * motion.metres_per_unit
    joints = chain_forward_kinematics(translations, rotations, motion.parents)
    if sorted(motion.names) == sorted(SMPL_JOINT_NAMES):
        joints = joints[:, [motion.names.index(name) for name in SMPL_JOINT_NAMES]]
    return joints, motion.fps
