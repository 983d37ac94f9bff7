"""Retraining ScarNet: data, augmentation, losses, loop, evaluation. The network comes from ScarNetCore."""
