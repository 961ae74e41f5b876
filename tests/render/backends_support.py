"""A minimal third-party radiance-field backend, named in configs by ``_target_`` (tests only)."""

import torch

from csd_exp.render import RadianceField, RenderOutput


class ConstantField(RadianceField):
    """The smallest conforming backend: a learnable constant colour, fully opaque."""

    def __init__(self, aabb, colour: float = 0.5):
        super().__init__()
        self.aabb = torch.as_tensor(aabb)
        self.colour = torch.nn.Parameter(torch.full((3,), float(colour)))

    def render(self, cameras, *, background=None, generator=None):
        V, H, W = len(cameras), cameras.height, cameras.width
        rgb = self.colour.view(1, 3, 1, 1).expand(V, 3, H, W)
        return RenderOutput(rgb, torch.ones(V, 1, H, W), torch.ones(V, 1, H, W))

    def parameters_for_optimizer(self, lr_scale=1.0):
        return [{"name": "colour", "params": [self.colour], "lr": 0.1 * lr_scale}]
