"""Models: timm backbones and the multi-crop wrapper."""
