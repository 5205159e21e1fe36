"""Rendering Gaussians: the differentiable rasterizer, portrait cameras, dense mesh splats and the
seeds x expressions gallery.

Builds on :mod:`agora_core.generator`, :mod:`agora_core.heads` and :mod:`agora_core.types`.
"""
from agora_core.render.rasterizer import RenderOutput, rasterize
from agora_core.render.views import portrait_cameras

__all__ = ["RenderOutput", "portrait_cameras", "rasterize"]
