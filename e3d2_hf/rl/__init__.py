"""The MDP PPO optimises: music segments, episodes, held-out pieces, and the reward functions."""
