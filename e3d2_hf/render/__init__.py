"""Turning dances into things people watch and use: skeleton videos with the music (`video`), BVH and npz files (`export`)."""
