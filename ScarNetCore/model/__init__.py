"""The ScarNet network: one definition, used by inference and training."""
from .encoders import ENCODERS, build_encoder
from .scarnet import ScarNet, ScarNetConfig, count_parameters, middle_channels

__all__ = ["ENCODERS", "ScarNet", "ScarNetConfig", "build_encoder", "count_parameters", "middle_channels"]
