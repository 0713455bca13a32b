"""Networks: the autoencoders (KL, VQ), the U-Net and its blocks, the text encoder, EfficientNet-Lite0, checkpoints."""
