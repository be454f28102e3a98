"""A small Vision Transformer encoder (Dosovitskiy et al. 2021), the paper's backbone family, written with
torch's own `nn.TransformerEncoderLayer` (torchvision and timm do not import beside this project's CPU torch).

image (B,3,H,W) → patches p×p → tokens + learned positions → pre-norm transformer blocks →
    features (B, feature_dim) from the class token, feature map (B, map_dim, H/p, W/p) from the patch tokens.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ViTEncoder"]


class ViTEncoder(nn.Module):
    """image_size: the square input side (a multiple of `patch`); dim: token width; depth: blocks; heads: attention
    heads (dim divisible by it); feature_dim: global feature size; map_dim: channels of the feature map."""

    def __init__(self, image_size: int, dim: int, depth: int, heads: int, feature_dim: int, map_dim: int,
                 patch: int = 16) -> None:
        super().__init__()
        if image_size % patch or dim % heads:
            raise ValueError(f"ViTEncoder: image_size {image_size} must be a multiple of patch {patch} and dim {dim} "
                             f"of heads {heads}")
        self.image_size, self.patch, self.grid = image_size, patch, image_size // patch
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(0.02 * torch.randn(1, 1 + self.grid ** 2, dim))
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, feature_dim)
        self.to_map = nn.Conv2d(dim, map_dim, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B,3,S,S), S = image_size → (features (B,feature_dim), feature map (B,map_dim,S/p,S/p))."""
        if image.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"ViTEncoder: built for {self.image_size}² images, got {tuple(image.shape[-2:])}; set "
                             "ModelConfig.image_size to the data's size")
        tokens = self.embed(image * 2.0 - 1.0).flatten(2).transpose(1, 2)  # (B, g², dim)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], 1) + self.position
        tokens = self.norm(self.blocks(tokens))
        grid = tokens[:, 1:].transpose(1, 2).reshape(len(tokens), -1, self.grid, self.grid)
        return self.head(tokens[:, 0]), self.to_map(grid)
