"""agora_core: head models, the AGORA generator, a Gaussian rasterizer and AGORA-M extraction."""
from agora_core.types.camera import Camera, look_at, orbit_camera
from agora_core.types.gaussians import Gaussians
from agora_core.heads.model import HeadModel, HeadModelData, lbs
from agora_core.render.rasterizer import RenderOutput, rasterize

__version__ = "0.1.0"
__all__ = [
    "Camera", "Gaussians", "HeadModel", "HeadModelData", "RenderOutput", "lbs", "look_at", "orbit_camera",
    "rasterize", "__version__",
]
