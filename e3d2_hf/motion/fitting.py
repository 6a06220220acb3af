"""Motion fitting: joint positions -> rotations on one rigid skeleton.

The dance models produce SMPL-24 joint positions only, and their bones stretch a little from frame
to frame; a character rig, a BVH file and an SMPL body want one skeleton with fixed bones and
per-joint rotations. `bone_offsets` measures that skeleton from the dance, `joints_to_rotations`
solves the rotations along the kinematic tree and `fit_skeleton` gives back the joints it reaches;
`fit_rest_skeleton` puts a dance on the SMPL rest skeleton's bones (what decoded dances are), and
`joints_to_smpl` solves the rotations on that skeleton as SMPL parameters.

Conventions: joints in SMPL order, metres, y up.
"""

from __future__ import annotations

import numpy as np

from e3d2_hf.motion.rotations import best_fit_rotation, matrix_to_axis_angle, minimal_rotation_matrix
from e3d2_hf.motion.skeleton import NUM_JOINTS, SMPL_CHILDREN, SMPL_PARENTS, chain_forward_kinematics, rest_joints
from e3d2_hf.utils import E3D2Error


def check_joints(joints: np.ndarray, what: str) -> np.ndarray:
    """`joints` as float64 (T, 24, 3), or an E3D2Error naming `what` (the caller or the file being written)."""
    try:
        joints = np.asarray(joints, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise E3D2Error(f"{what}: joints are not numbers ({exc})") from exc
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3) or len(joints) < 1:
        raise E3D2Error(f"{what}: joints must have shape (T, {NUM_JOINTS}, 3) with T >= 1, got {joints.shape}")
    if not np.isfinite(joints).all():
        raise E3D2Error(f"{what}: joints contain NaN or infinite values")
    return joints


def _rest_offsets(rest: np.ndarray | None) -> np.ndarray:
    rest = rest_joints("male") if rest is None else np.asarray(rest, dtype=np.float64)
    if rest.shape != (NUM_JOINTS, 3) or not np.isfinite(rest).all():
        raise E3D2Error(f"rest skeleton: expected finite joint positions of shape ({NUM_JOINTS}, 3), got {rest.shape}")
    offsets = rest - rest[np.maximum(SMPL_PARENTS, 0)]
    if (np.linalg.norm(offsets[1:], axis=-1) < 1e-9).any():
        raise E3D2Error("rest skeleton: a bone has zero length, so its direction is undefined")
    return offsets


def bone_offsets(joints: np.ndarray, rest: np.ndarray | None = None) -> np.ndarray:
    """Parent offsets (24, 3) in metres measured from the dance itself (root offset 0).

    Generated dances do not keep the SMPL bone lengths, so a BVH with the rest skeleton's bones
    could not reach the joints. A bone that is its parent's only child keeps the rest direction
    (`rest`, default the male SMPL skeleton) with the median length over the frames. The children
    of a joint with several (pelvis: hips and spine; spine3: neck and collars) also get their
    directions from the dance, the median of their offsets in the joint's best-fit frame, so
    that a pelvis shaped differently from the rest one still fits.
    """
    joints = check_joints(joints, "bone offsets")
    rest_offsets = _rest_offsets(rest)
    offsets = np.zeros((NUM_JOINTS, 3))
    for joint, children in enumerate(SMPL_CHILDREN):
        observed = joints[:, children] - joints[:, joint, None]
        if len(children) == 1:
            direction = rest_offsets[children[0]] / np.linalg.norm(rest_offsets[children[0]])
            offsets[children[0]] = direction * np.median(np.linalg.norm(observed[:, 0], axis=-1))
        elif len(children) > 1:
            frames = best_fit_rotation(rest_offsets[children], observed)
            offsets[children] = np.median(np.einsum("tji,tkj->tki", frames, observed), axis=0)
    return offsets


def joints_to_rotations(
    joints: np.ndarray, rest: np.ndarray | None = None, *, offsets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Root translation (T, 3) = pelvis position in metres, and local rotations (T, 24, 3, 3).

    FK with `offsets` (default `bone_offsets(joints, rest)`) and these rotations gives back the
    joints; what remains comes from frames whose bone lengths differ from the offsets' (it can
    add up along a nearly straight chain). Each joint aims its bone at the observed child from
    where FK has put the joint so far, so that errors do not grow down bent chains. A joint with one child takes the minimal
    rotation relative to its parent (no twist about the bone: positions carry no twist); a
    joint with several children takes the least-squares (Kabsch) fit of all of them, which
    fixes the pelvis' and chest's twist. Leaves (feet, hands, head) get the identity.
    """
    joints = check_joints(joints, "joints to rotations")
    offsets = bone_offsets(joints, rest) if offsets is None else np.asarray(offsets, dtype=np.float64)
    if offsets.shape != (NUM_JOINTS, 3):
        raise E3D2Error(f"bone offsets: expected shape ({NUM_JOINTS}, 3), got {offsets.shape}")
    frames = len(joints)
    local_rotations = np.broadcast_to(np.eye(3), (frames, NUM_JOINTS, 3, 3)).copy()
    global_rotations = local_rotations.copy()
    positions = np.empty_like(joints)
    positions[:, 0] = joints[:, 0]
    for joint, children in enumerate(SMPL_CHILDREN):
        parent_rotation = global_rotations[:, SMPL_PARENTS[joint]] if joint > 0 else np.eye(3)[None]
        if not children:
            global_rotations[:, joint] = parent_rotation
            continue
        aims = joints[:, children] - positions[:, joint, None]
        local_aims = np.einsum("tji,tkj->tki", np.broadcast_to(parent_rotation, (frames, 3, 3)), aims)
        if len(children) == 1:
            local_rotations[:, joint] = minimal_rotation_matrix(offsets[children[0]], local_aims[:, 0])
        else:
            local_rotations[:, joint] = best_fit_rotation(offsets[children], local_aims)
        global_rotations[:, joint] = parent_rotation @ local_rotations[:, joint]
        bones = np.einsum("tij,kj->tki", global_rotations[:, joint], offsets[children])
        positions[:, children] = positions[:, joint, None] + bones
    return joints[:, 0].copy(), local_rotations


def fit_skeleton(joints: np.ndarray, rest: np.ndarray | None = None) -> np.ndarray:
    """The dance on one rigid skeleton: FK of `joints_to_rotations` with the dance's own `bone_offsets`.

    A generated dance's bones stretch a little from frame to frame; a character rig (and a BVH
    file) cannot. Fitted joints keep every bone at one length, and are exactly what the BVH
    export carries, so the npz and the BVH of a dance hold the same motion.
    """
    joints = check_joints(joints, "fit skeleton")
    return _pose_skeleton(joints, bone_offsets(joints, rest))


def fit_rest_skeleton(joints: np.ndarray, rest: np.ndarray | None = None) -> np.ndarray:
    """The dance on the rest skeleton `rest` (default the male SMPL one): its bone directions, SMPL's bone lengths.

    The training dances are SMPL bodies (betas 0), so every bone has its rest length; a VQ-VAE
    decoder regressing positions shortens the uncertain ones (held-out reconstructions of the tiny
    run: forearms at 77% of their length, wrists +-4.5 cm from frame to frame). Placed back on
    the rest skeleton, a decoded dance is a body the data could contain, and its SMPL parameters
    (`joints_to_smpl`) reproduce it exactly. Frames are independent: any (T, 24, 3) batch of poses.
    """
    joints = check_joints(joints, "fit rest skeleton")
    return _pose_skeleton(joints, _rest_offsets(rest))


FRAMES_PER_CHUNK = 2048  # (T, 24, 3) work arrays stay a few MB, reused by the allocator instead of fresh pages


def _pose_skeleton(joints: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """`reached_positions` of `joints` (T, 24, 3) in chunks of frames (float32): work arrays are reused, not paged in."""
    fitted = np.empty(joints.shape, dtype=np.float32)
    for first in range(0, len(joints), FRAMES_PER_CHUNK):
        fitted[first : first + FRAMES_PER_CHUNK] = reached_positions(joints[first : first + FRAMES_PER_CHUNK], offsets)
    return fitted


def reached_positions(joints: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The joints (T, 24, 3) that forward kinematics of `joints_to_rotations(joints, offsets=offsets)` reaches.

    Without those rotations: the parent's frame cancels out of each bone. A joint with one child
    turns its offset onto the aim at the observed child, so the bone is the aim cut to the
    offset's length; a joint with several takes the Kabsch fit of its offsets to the aims, which
    is the same in the world frame as in its parent's. (Solving the rotations and then the
    forward kinematics, `positions_through_rotations`, takes 3x as long: `scripts/bench.py
    --only rest_skeleton_fit`.) A child on top of its joint has no aim, and children on one line
    no unique fit: those frames are solved through the rotations. (Within 5e-5 rad of pointing
    opposite its offset, a bone here is exact where the rotation solve snaps to a half turn.)
    """
    lengths = np.linalg.norm(offsets, axis=-1)
    positions = np.empty_like(joints, dtype=np.float64)
    positions[:, 0] = joints[:, 0]
    aimless = np.zeros(len(joints), dtype=bool)
    for joint, children in enumerate(SMPL_CHILDREN):
        if not children:
            continue
        aims = joints[:, children] - positions[:, joint, None]
        if len(children) == 1:
            aim_lengths = np.linalg.norm(aims[:, 0], axis=-1)
            aimless |= aim_lengths <= 1e-12
            bones = aims * (lengths[children[0]] / np.maximum(aim_lengths, 1e-12))[:, None, None]
        else:
            # Kabsch is unique only for a covariance of rank >= 2 (aims not all on one line, not all
            # zero); otherwise the two frames may pick different rotations: solve those through them.
            spread = np.linalg.svd(np.einsum("ki,tkj->tij", offsets[children], aims), compute_uv=False)
            aimless |= spread[:, 1] <= 1e-9 * np.maximum(spread[:, 0], 1e-12)
            bones = np.einsum("tij,kj->tki", best_fit_rotation(offsets[children], aims), offsets[children])
        positions[:, children] = positions[:, joint, None] + bones
    if aimless.any():
        positions[aimless] = positions_through_rotations(joints[aimless], offsets)
    return positions


def positions_through_rotations(joints: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Forward kinematics of `joints_to_rotations(joints, offsets=offsets)` (T, 24, 3): what `reached_positions` gives, the long way."""
    root, rotations = joints_to_rotations(joints, offsets=offsets)
    translations = np.broadcast_to(offsets, (len(root), NUM_JOINTS, 3)).copy()
    translations[:, 0] = root
    return chain_forward_kinematics(translations, rotations, SMPL_PARENTS)


def joints_to_smpl(joints: np.ndarray, rest: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SMPL parameters posing the rest skeleton `rest` (default the male one) onto `joints`: axis-angle (T, 24, 3), transl (T, 3).

    The rotations are `joints_to_rotations` on the rest skeleton's bones, not the dance's: an SMPL
    body's bones have its own lengths, so where the dance's differ, forward kinematics of these
    parameters misses the dance by that much (measure it). `transl` is the pelvis minus its rest
    position, because SMPL rotates the root about its rest position before translating it.
    """
    joints = check_joints(joints, "SMPL fit")
    rest = rest_joints("male") if rest is None else np.asarray(rest, dtype=np.float64)
    root, rotations = joints_to_rotations(joints, offsets=_rest_offsets(rest))
    return matrix_to_axis_angle(rotations), root - rest[0]
