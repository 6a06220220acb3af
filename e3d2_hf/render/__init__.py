"""Turning dances into things people watch and use: skeleton videos with the music (`video`), BVH files (`bvh`)."""
