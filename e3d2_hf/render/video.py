"""Skeleton videos of dances with their music: mp4 (H.264 + AAC) or GIF, and PNG stills.

A 20-minute song is 36 000 frames at 30 fps, so frames are drawn with Pillow (matplotlib would take
hours), 2x supersampled for anti-aliasing, and piped as raw RGB into the ffmpeg binary bundled with
imageio-ffmpeg. We start that ffmpeg ourselves rather than through `imageio_ffmpeg.write_frames`,
because its error text must reach the `E3D2Error` and the GIF encoder needs a second input (its
palette).

Picture: a perspective camera in front of the dancer (SMPL bodies face +z), a little to the side
and looking slightly down, follows the root horizontally (Gaussian-smoothed, so steps do not shake
the picture); every panel uses the same camera, so dances side by side compare fairly. The floor
grid lies on y = 0 and fades out a few metres around the dancer. Bones are coloured by side (left
blue, right red, centre grey), joints are dark dots, the head is a disc.
"""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter1d
from tqdm.auto import tqdm

from e3d2_hf.motion.skeleton import NUM_JOINTS, SMPL_JOINT_NAMES, SMPL_PARENTS
from e3d2_hf.utils import E3D2Error, atomic_file, atomic_path, existing_file

# Frame rate of the video per format when `render_fps` is None: the 60 fps motion sub-sampled to
# 30 fps (smooth enough, half the work), and 20 fps for GIF to keep the files small.
DEFAULT_RENDER_FPS = {".mp4": 30.0, ".gif": 20.0}

_SUPERSAMPLE = 2
_CAMERA_DISTANCE = 4.5  # metres from the followed point, horizontally
_CAMERA_HEIGHT = 1.9  # eye height: looks slightly down at the look-at point
_LOOK_AT_HEIGHT = 1.05
_CAMERA_YAW = math.radians(20.0)  # towards the dancer's left, so depth moves stay visible
_VIEW_HEIGHT = 2.6  # metres of the upright plane through the followed point that fill the panel height
_FOLLOW_SIGMA_S = 0.5  # smoothing of the followed root, seconds
_NEAR = 0.3
_BONE_WIDTH = 0.045  # metres
_JOINT_RADIUS = 0.03
_HEAD_RADIUS = 0.095
_HEAD_LIFT = 0.09  # head disc centre above the head joint (SMPL's head joint is at the skull base)
_GRID_SPACING = 0.5
_GRID_SEGMENT = 1.0  # grid lines are drawn in pieces this long, each with its own fade
_GRID_RADIUS = 5.0  # the grid fades out this far from the dancer
_SHADOW_RADIUS = 0.3

_WHITE = (255, 255, 255)
_LEFT = (40, 100, 225)
_RIGHT = (220, 50, 45)
_CENTRE = (95, 95, 95)
_JOINT = (35, 35, 35)
_GRID = (150, 150, 150)
_SHADOW = (225, 225, 225)
_TEXT = (20, 20, 20)
_SEPARATOR = (200, 200, 200)


def _side_colour(name: str) -> tuple[int, int, int]:
    return _LEFT if name.startswith("left_") else _RIGHT if name.startswith("right_") else _CENTRE


# Bone (parent, child), coloured by the child: the hip and collar bones belong to their side.
_BONES = [(int(SMPL_PARENTS[child]), child, _side_colour(SMPL_JOINT_NAMES[child])) for child in range(1, NUM_JOINTS)]
_HEAD, _NECK = SMPL_JOINT_NAMES.index("head"), SMPL_JOINT_NAMES.index("neck")


def _grid_segments() -> np.ndarray:
    """Grid segments (S, 2, 2) as (x, z) endpoints around the origin, `_GRID_SEGMENT` long, so
    each can fade with its own distance from the dancer."""
    reach = (math.ceil(_GRID_RADIUS / _GRID_SEGMENT) + 1) * _GRID_SEGMENT  # covers the fade disc around any centre
    lines = np.arange(-reach, reach + _GRID_SPACING / 2, _GRID_SPACING)
    starts = np.arange(-reach, reach, _GRID_SEGMENT)
    across, along = np.meshgrid(lines, starts, indexing="ij")
    start = np.stack([across, along], axis=-1).reshape(-1, 2)
    lines_along_z = np.stack([start, start + [0.0, _GRID_SEGMENT]], axis=1)
    return np.concatenate([lines_along_z, lines_along_z[..., ::-1]])


_GRID_SEGMENTS = _grid_segments()
_GRID_SHADES = 32


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _blend(colour: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    return tuple(round(255 + (c - 255) * alpha) for c in colour)


class _Panel:
    """Draws one dance's pose (the camera, grid and skeleton) into a panel of `size` pixels."""

    def __init__(self, size: tuple[int, int]):
        self.width, self.height = size
        scale = _SUPERSAMPLE
        self.focal = min(self.height, 1.2 * self.width) * scale * _CAMERA_DISTANCE / _VIEW_HEIGHT
        self.principal = np.array([self.width * scale / 2.0, self.height * scale / 2.0])
        self.eye_offset = np.array(
            [_CAMERA_DISTANCE * math.sin(_CAMERA_YAW), _CAMERA_HEIGHT, _CAMERA_DISTANCE * math.cos(_CAMERA_YAW)]
        )
        forward = np.array([0.0, _LOOK_AT_HEIGHT, 0.0]) - self.eye_offset
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        self.rotation = np.stack([right, np.cross(right, forward), forward])  # world -> camera (x right, y up, z ahead)
        self.grid_colours = [_blend(_GRID, shade / (_GRID_SHADES - 1)) for shade in range(_GRID_SHADES)]

    def project(self, points: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (..., 2) at supersampled scale and depths (...) of world points (..., 3)."""
        eye = self.eye_offset + [centre[0], 0.0, centre[1]]
        camera = (points - eye) @ self.rotation.T
        depth = camera[..., 2]
        safe = np.maximum(depth, _NEAR)
        pixels = self.principal + self.focal * np.stack([camera[..., 0], -camera[..., 1]], axis=-1) / safe[..., None]
        return pixels, depth

    def draw(self, joints: np.ndarray, centre: np.ndarray) -> Image.Image:
        scale = _SUPERSAMPLE
        image = Image.new("RGB", (self.width * scale, self.height * scale), _WHITE)
        draw = ImageDraw.Draw(image)
        self._draw_floor(draw, joints, centre)
        self._draw_skeleton(draw, joints, centre)
        return image.reduce(scale)

    def _draw_floor(self, draw: ImageDraw.ImageDraw, joints: np.ndarray, centre: np.ndarray) -> None:
        # Segments sit at fixed world positions (the origin snaps by whole segments), so the grid slides
        # under the dancer as the camera follows, and no segment changes its shade when the origin snaps.
        xz = _GRID_SEGMENTS + np.round(centre / _GRID_SEGMENT) * _GRID_SEGMENT
        distance = np.linalg.norm(xz.mean(axis=1) - centre, axis=-1)
        alpha = np.clip(1.0 - distance / _GRID_RADIUS, 0.0, 1.0) ** 0.7
        points = np.stack([xz[..., 0], np.zeros(xz.shape[:2]), xz[..., 1]], axis=-1)
        pixels, depth = self.project(points, centre)
        keep = (alpha > 0.02) & (depth.min(axis=1) > _NEAR)
        shades = np.rint(alpha[keep] * (_GRID_SHADES - 1)).astype(np.int64).tolist()
        for (start, end), shade in zip(pixels[keep].tolist(), shades):
            draw.line((*start, *end), fill=self.grid_colours[shade], width=_SUPERSAMPLE)
        ring = np.linspace(0.0, 2.0 * math.pi, 24, endpoint=False)
        shadow = np.stack(
            [joints[0, 0] + _SHADOW_RADIUS * np.cos(ring), np.zeros_like(ring), joints[0, 2] + _SHADOW_RADIUS * np.sin(ring)],
            axis=-1,
        )
        shadow_pixels, shadow_depth = self.project(shadow, centre)
        if shadow_depth.min() > _NEAR:
            draw.polygon([tuple(p) for p in shadow_pixels.tolist()], fill=_SHADOW)

    def _draw_skeleton(self, draw: ImageDraw.ImageDraw, joints: np.ndarray, centre: np.ndarray) -> None:
        neck_to_head = joints[_HEAD] - joints[_NECK]
        head = joints[_HEAD] + _HEAD_LIFT * neck_to_head / max(float(np.linalg.norm(neck_to_head)), 1e-6)
        pixels, depth = self.project(np.concatenate([joints, head[None]]), centre)
        if depth.min() <= _NEAR:  # the dancer left the camera's side of the followed point: skip the pose
            return
        size = self.focal / depth  # pixels per metre at each joint
        px = pixels.tolist()
        # Painter's order: farthest first, so the near arm passes in front of the body.
        items = [(float(depth[a] + depth[b]) / 2.0, 0, a, b, colour) for a, b, colour in _BONES]
        items += [(float(depth[j]) - 1e-3, 1, j, j, _JOINT) for j in range(NUM_JOINTS)]
        items.append((float(depth[-1]), 2, NUM_JOINTS, NUM_JOINTS, _CENTRE))
        for _, kind, a, b, colour in sorted(items, key=lambda item: -item[0]):
            if kind == 0:
                width = max(1, round(_BONE_WIDTH * (size[a] + size[b]) / 2.0))
                draw.line((*px[a], *px[b]), fill=colour, width=width)
            else:
                radius = (_JOINT_RADIUS if kind == 1 else _HEAD_RADIUS) * size[a]
                x, y = px[a]
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)


class _FrameRenderer:
    """Panels side by side, left to right, each with its title, and the time at the bottom right."""

    def __init__(self, size: tuple[int, int], titles: Sequence[str] | None, panels: int):
        self.size, self.panels = size, panels
        self.titles = list(titles) if titles is not None else [""] * panels
        self.panel = _Panel(size)
        self.title_font = _font(max(10, round(size[1] * 0.05)))
        self.time_font = _font(max(9, round(size[1] * 0.04)))

    def frame(self, poses: Sequence[np.ndarray], centres: Sequence[np.ndarray], time_s: float | None) -> Image.Image:
        width, height = self.size
        frame = Image.new("RGB", (width * self.panels, height), _WHITE)
        for index, (joints, centre) in enumerate(zip(poses, centres)):
            frame.paste(self.panel.draw(joints, centre), (index * width, 0))
        draw = ImageDraw.Draw(frame)
        margin = max(4, round(height * 0.025))
        for index, title in enumerate(self.titles):
            if index:
                draw.line((index * width, 0, index * width, height), fill=_SEPARATOR, width=1)
            if title:
                draw.text((index * width + width / 2, margin), title, fill=_TEXT, font=self.title_font, anchor="mt")
        if time_s is not None:
            minutes, seconds = divmod(max(time_s, 0.0), 60.0)
            draw.text(
                (width * self.panels - margin, height - margin),
                f"{int(minutes)}:{seconds:04.1f}",
                fill=_TEXT,
                font=self.time_font,
                anchor="rb",
            )
        return frame


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _validate_dances(dances: np.ndarray | Sequence[np.ndarray], where: str) -> list[np.ndarray]:
    if isinstance(dances, np.ndarray) and dances.ndim == 3:
        dances = [dances]
    dances = list(dances)
    if not dances:
        raise E3D2Error(f"{where}: no dance to render")
    checked = []
    for index, joints in enumerate(dances):
        joints = np.asarray(joints, dtype=np.float64)
        if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3) or len(joints) == 0:
            raise E3D2Error(f"{where}: dance {index}: expected joints of shape (T, {NUM_JOINTS}, 3) with T >= 1, got {joints.shape}")
        if not np.all(np.isfinite(joints)):
            raise E3D2Error(f"{where}: dance {index}: joints contain NaN or infinite values")
        checked.append(joints)
    return checked


def _validate_titles(titles: str | Sequence[str] | None, count: int, where: str) -> list[str] | None:
    if titles is None:
        return None
    titles = [titles] if isinstance(titles, str) else [str(title) for title in titles]
    if len(titles) != count:
        raise E3D2Error(f"{where}: {len(titles)} title(s) for {count} dance(s)")
    return titles


def _validate_size(size: Sequence[int], where: str) -> tuple[int, int]:
    try:
        width, height = (int(value) for value in size)
        valid = (width, height) == tuple(size) and min(width, height) >= 64 and width % 2 == 0 == height % 2
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise E3D2Error(f"{where}: panel size {size!r}: expected (width, height), even integers >= 64 (H.264 needs even sizes)")
    return width, height


def _validate_rate(value: float, name: str, where: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = math.nan
    if not math.isfinite(rate) or rate <= 0:
        raise E3D2Error(f"{where}: {name} must be a positive number, got {value!r}")
    return rate


def _follow(joints: np.ndarray, fps: float) -> np.ndarray:
    """The point the camera follows: the root's (x, z), smoothed over about a second."""
    return gaussian_filter1d(joints[:, 0, [0, 2]], sigma=_FOLLOW_SIGMA_S * fps, axis=0, mode="nearest")


def _check_music(music_path: str | os.PathLike) -> Path:
    """Decode the first second with ffmpeg, so an unreadable file fails before minutes of rendering."""
    music = existing_file(music_path, "music file")
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(music), "-map", "0:a:0", "-t", "1", "-f", "null", "-"]
    result = subprocess.run(command, check=False, capture_output=True, timeout=120)
    if result.returncode != 0:
        raise E3D2Error(f"{music}: cannot read the music ({_ffmpeg_reason(result.stderr)})")
    return music


def _ffmpeg_reason(stderr: bytes) -> str:
    """ffmpeg's first error line (the later ones only repeat that it gave up), without its '[in#0 @ 0x..]' tag."""
    text = stderr.decode(errors="replace")
    if "matches no streams" in text:
        return "no audio stream in the file"
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in text.splitlines()]
    return next((line for line in lines if line), "ffmpeg gave no reason")


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------
def _gif_palette(path: Path) -> None:
    """ffmpeg's 256-colour GIF palette: each drawing colour faded to white (anti-aliased edges and
    the fading grid are such blends), so a fixed palette is exact and GIFs stream in constant memory."""
    shades = []
    for colour in ((0, 0, 0), _LEFT, _RIGHT):
        shades += [_blend(colour, alpha) for alpha in np.linspace(1.0, 0.0, 85, endpoint=False)]
    shades.append(_WHITE)
    image = Image.new("RGB", (16, 16))
    image.putdata(shades)
    image.save(path)


def _encode(command: list[str], frames: Iterable[bytes], what: str) -> None:
    """Pipe raw frames into ffmpeg; its error output becomes the E3D2Error."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        broken = False
        try:
            try:
                for frame in frames:
                    process.stdin.write(frame)
                process.stdin.close()
            except BrokenPipeError:  # ffmpeg stopped early; its log says why
                broken = True
        except BaseException:
            process.kill()
            process.wait()
            raise
        returncode = process.wait()
        if returncode != 0 or broken:
            log.seek(0)
            raise E3D2Error(f"{what}: ffmpeg failed ({_ffmpeg_reason(log.read())})")


def render_video(
    path: str | os.PathLike,
    dances: np.ndarray | Sequence[np.ndarray],
    *,
    fps: float = 60.0,
    music_path: str | os.PathLike | None = None,
    titles: str | Sequence[str] | None = None,
    size: tuple[int, int] = (640, 480),
    render_fps: float | None = None,
    progress: bool = False,
) -> Path:
    """Render joints (T, 24, 3) in metres (y up, SMPL order, `fps` frames a second) as a skeleton video.

    Several dances go side by side, left to right, each panel `size` = (width, height) pixels with
    its title; the video lasts as long as the longest dance, shorter ones hold their last pose.
    The suffix picks the format: `.mp4` is H.264 (yuv420p) at `render_fps` = 30 by default, with
    `music_path` (anything ffmpeg decodes) as an AAC track starting with the first frame, cut or
    padded with silence to the video's length; `.gif` has no sound (`music_path` is ignored) and
    20 fps by default. The motion is sub-sampled to `render_fps` (nearest frame). The file appears
    only when complete.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DEFAULT_RENDER_FPS:
        raise E3D2Error(f"{path}: unsupported video format '{path.suffix}' (use .mp4 or .gif)")
    dances = _validate_dances(dances, str(path))
    titles = _validate_titles(titles, len(dances), str(path))
    size = _validate_size(size, str(path))
    fps = _validate_rate(fps, "fps", str(path))
    render_fps = _validate_rate(DEFAULT_RENDER_FPS[suffix] if render_fps is None else render_fps, "render_fps", str(path))
    music = _check_music(music_path) if music_path is not None and suffix == ".mp4" else None

    num_frames = max(1, round(max(len(joints) for joints in dances) * render_fps / fps))
    centres = [_follow(joints, fps) for joints in dances]
    renderer = _FrameRenderer(size, titles, len(dances))

    def frames() -> Iterator[bytes]:
        for k in tqdm(range(num_frames), desc=f"rendering {path.name}", unit="frame", disable=not progress):
            motion = [min(int(k * fps / render_fps + 0.5), len(joints) - 1) for joints in dances]
            poses = [joints[i] for joints, i in zip(dances, motion)]
            yield renderer.frame(poses, [centre[i] for centre, i in zip(centres, motion)], k / render_fps).tobytes()

    rate = str(Fraction(render_fps).limit_denominator(1001))
    raw_input = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size[0] * len(dances)}x{size[1]}", "-r", rate, "-i", "-"]
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as scratch:  # same suffix: ffmpeg picks the muxer
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error"] + raw_input
        if suffix == ".mp4":
            if music is not None:
                command += ["-i", str(music), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "160k", "-af", "apad"]
            command += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "23", "-preset", "veryfast"]
            command += ["-t", f"{num_frames / render_fps:.6f}", "-movflags", "+faststart", "-f", "mp4", str(tmp)]
        else:
            palette = Path(scratch) / "palette.png"
            _gif_palette(palette)
            command += ["-i", str(palette), "-lavfi", "[0:v][1:v]paletteuse=dither=none:diff_mode=rectangle"]
            command += ["-loop", "0", "-f", "gif", str(tmp)]
        _encode(command, frames(), f"{path}" + (f" with music {music}" if music is not None else ""))
    return path


def render_frame(
    poses: np.ndarray | Sequence[np.ndarray],
    *,
    titles: str | Sequence[str] | None = None,
    size: tuple[int, int] = (640, 480),
    time_s: float | None = None,
    centres: Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """One video frame (height, width * panels, 3) uint8 of one pose (24, 3) per panel.

    `centres` are the (x, z) points the camera follows, one per panel; by default each pose's
    root (the video follows the smoothed root instead). `time_s` prints the time counter.
    """
    poses = [poses] if isinstance(poses, np.ndarray) and poses.ndim == 2 else list(poses)
    dances = _validate_dances([np.asarray(pose)[None] for pose in poses], "render_frame")
    titles = _validate_titles(titles, len(dances), "render_frame")
    size = _validate_size(size, "render_frame")
    if centres is None:
        centres = [joints[0, 0, [0, 2]] for joints in dances]
    centres = [np.asarray(centre, dtype=np.float64) for centre in centres]
    if len(centres) != len(dances) or any(centre.shape != (2,) or not np.all(np.isfinite(centre)) for centre in centres):
        raise E3D2Error(f"render_frame: expected one finite (x, z) centre per pose ({len(dances)})")
    image = _FrameRenderer(size, titles, len(dances)).frame([joints[0] for joints in dances], centres, time_s)
    return np.asarray(image)


def save_still(
    path: str | os.PathLike,
    dances: np.ndarray | Sequence[np.ndarray],
    frame_index: int,
    *,
    fps: float = 60.0,
    titles: str | Sequence[str] | None = None,
    size: tuple[int, int] = (640, 480),
) -> Path:
    """Write motion frame `frame_index` of the dances as a PNG, exactly as the video shows it."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise E3D2Error(f"{path}: a still is written as .png, not '{path.suffix}'")
    dances = _validate_dances(dances, str(path))
    fps = _validate_rate(fps, "fps", str(path))
    longest = max(len(joints) for joints in dances)
    if not isinstance(frame_index, (int, np.integer)) or not 0 <= frame_index < longest:
        raise E3D2Error(f"{path}: frame_index {frame_index!r} outside the dances' 0..{longest - 1}")
    motion = [min(int(frame_index), len(joints) - 1) for joints in dances]
    frame = render_frame(
        [joints[i] for joints, i in zip(dances, motion)],
        titles=titles,
        size=size,
        time_s=frame_index / fps,
        centres=[_follow(joints, fps)[i] for joints, i in zip(dances, motion)],
    )
    with atomic_file(path) as handle:  # a write that fails is an E3D2Error naming `path`
        Image.fromarray(frame).save(handle, format="PNG")
    return path
