"""The MDP PPO optimises (music segments, episodes, pieces to dance to), the reward functions, PPO's formulas and seeding."""
