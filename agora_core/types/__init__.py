"""Shared types of every stage: :class:`Gaussians`, :class:`Camera`, errors, atomic I/O and the AGORA-M spec.

Imports nothing else from the project: every other package builds on it.
"""
from agora_core.types.camera import Camera, camera_from_conditioning, intrinsics, look_at, orbit_camera
from agora_core.types.errors import AgoraError
from agora_core.types.gaussians import Gaussians

__all__ = ["AgoraError", "Camera", "Gaussians", "camera_from_conditioning", "intrinsics", "look_at", "orbit_camera"]
