"""The binary layout of an ``.agm`` file (``docs/agm-format.md``, version 1.1): constants shared by the
writer, the reader and the inspector, and the format error.

A file is a 64-byte-aligned sequence: the preamble (:data:`PREAMBLE`), the JSON header, then the
sections (every offset a multiple of :data:`ALIGN`) with their dtype, shape and CRC-32 in the header.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

from agora_core.types.errors import AgoraError

MAGIC = b"\x89AGM\r\n\x1a\n"
VERSION = (1, 1)  # what the writer writes; readers read every 1.x
PREAMBLE = struct.Struct("<8sHHIIIII")  # magic, major, minor, header_length, header_crc32, len lo, len hi, reserved
ALIGN = 64
ACTIVATIONS = ("leaky_relu", "none")
DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "i8": np.dtype("i1"), "u32": np.dtype("<u4"),
          "u8": np.dtype("u1"), "u16": np.dtype("<u2")}
DTYPES_1_0 = ("f32", "f16", "i8", "u32")  # u8 and u16 are 1.1
FLOAT_DTYPES = ("f32", "f16")  # sections that must hold no NaN or infinity
NEUTRAL_MODES = ("float", "quantized")  # quantization.neutral (1.1)
MLP_MODES = {"f32": "f32", "fp16": "f16", "int8": "i8"}  # quantization.mlp (1.1) -> weight dtype
QUANTIZED_NEUTRAL = ("means", "scales", "opacities", "sh_dc", "sh_rest")  # u8/u16 + *_range; quats: u32
MAX_JSON_DEPTH = 32
QUANT_DTYPE = {"fp16": "f16", "int8": "i8"}
DEFAULT_COORDINATES = {"units": "metres", "up": "+y", "face": "+z"}
MAX_SHAPE_DIMS = 8
MAX_INT = 2**53 - 1  # every count, offset and length is exact in a JavaScript number
MAX_SEED = MAX_INT  # |seed| bound


class AgmFormatError(AgoraError):
    """An ``.agm`` file is not valid; the message is one line naming the file and the problem."""


def align(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN`."""
    return -(-n // ALIGN) * ALIGN


def categories(sections: Mapping[str, int], header_bytes: int, file_length: int) -> dict[str, int]:
    cats = {"header": header_bytes, "identity": 0, "bases": 0, "mlp": 0, "other": 0}
    for name, length in sections.items():
        prefix = name.split("/", 1)[0]
        cats[prefix if prefix in ("identity", "bases", "mlp") else "other"] += length
    cats["padding"] = file_length - sum(cats.values())
    return cats


__all__ = ["ACTIVATIONS", "ALIGN", "AgmFormatError", "DEFAULT_COORDINATES", "DTYPES", "DTYPES_1_0", "FLOAT_DTYPES",
           "MAGIC", "MAX_INT", "MAX_JSON_DEPTH", "MAX_SEED", "MAX_SHAPE_DIMS", "MLP_MODES", "NEUTRAL_MODES", "PREAMBLE",
           "QUANTIZED_NEUTRAL", "QUANT_DTYPE", "VERSION", "align", "categories"]
