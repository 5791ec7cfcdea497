"""EditGAN engine: the models and algorithms shared by the gateway, the workers and the training commands.

Tensor legend used in shape comments throughout the package:
    N batch, L W+ layers (n_latent), S style dim, C channels, H/W height and width,
    K classes, M ensemble members, D per-pixel feature depth, P selected pixels.
Images are float NCHW in [-1, 1] inside the engine; uint8 HWC only at the edges (`engine.images`).
The engine reads no environment variables: paths and devices are arguments.
"""
