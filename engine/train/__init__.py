"""Training loops: the StyleGAN2 trainer that produces a generator for a bundle (CPU or GPU)."""

from engine.train.gan import GanTrainConfig, TrainResult, export_generator, train_gan

__all__ = ["GanTrainConfig", "TrainResult", "export_generator", "train_gan"]
