"""Audio and image front-ends written in torch (no torchaudio/torchvision)."""
