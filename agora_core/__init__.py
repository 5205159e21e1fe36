"""agora_core: head models, the AGORA generator, a Gaussian rasterizer and AGORA-M extraction."""
from agora_core.camera import Camera, look_at, orbit_camera
from agora_core.gaussians import Gaussians
from agora_core.head_model import HeadModel, HeadModelData, lbs
from agora_core.rasterizer import RenderOutput, rasterize

__version__ = "0.1.0"
__all__ = [
    "Camera", "Gaussians", "HeadModel", "HeadModelData", "RenderOutput", "lbs", "look_at", "orbit_camera",
    "rasterize", "__version__",
]
