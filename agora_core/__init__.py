"""agora_core: head models, the AGORA generator, a Gaussian rasterizer and AGORA-M extraction.

One subpackage per stage, each importing only the ones below it (``docs/architecture.md``):
``types`` <- ``heads`` <- ``generator`` <- ``render`` <- ``agora_m`` | ``training``.
The basic types are importable from here; everything else from its subpackage.
"""
from agora_core.heads.model import HeadModel, HeadModelData, lbs
from agora_core.render.rasterizer import RenderOutput, rasterize
from agora_core.types.camera import Camera, look_at, orbit_camera
from agora_core.types.errors import AgoraError
from agora_core.types.gaussians import Gaussians

__version__ = "0.1.0"
__all__ = [
    "AgoraError", "Camera", "Gaussians", "HeadModel", "HeadModelData", "RenderOutput", "lbs", "look_at",
    "orbit_camera", "rasterize", "__version__",
]
