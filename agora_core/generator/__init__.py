"""The AGORA generator: config and presets, the UV StyleGAN2 networks, the generator itself,
checkpoints (loading a model for a command) and identities (latents of seeds).

Builds on :mod:`agora_core.heads` and :mod:`agora_core.types`.
"""
from agora_core.generator.checkpoint import build_generator, load_generator, load_model, save_generator
from agora_core.generator.config import PRESETS, GeneratorConfig, get_preset
from agora_core.generator.identities import IdentitySet, identity_from_seed, sample_identities
from agora_core.generator.model import AgoraGenerator, Condition, IdentityCache, z_from_seed

__all__ = ["AgoraGenerator", "Condition", "GeneratorConfig", "IdentityCache", "IdentitySet", "PRESETS",
           "build_generator", "get_preset", "identity_from_seed", "load_generator", "load_model", "sample_identities",
           "save_generator", "z_from_seed"]
