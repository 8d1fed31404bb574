"""The bottom layer: types every other package shares (errors, sizes, the rig, the homography warp).
It imports nothing from the rest of skyfuse (README, "Layers")."""
