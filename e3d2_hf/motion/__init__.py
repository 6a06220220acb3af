"""The body: the SMPL skeleton, rotations and fitting joints to a rigid skeleton."""
