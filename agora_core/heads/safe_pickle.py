"""Load FLAME-style pickles without ever running code stored in them.

Why pickle at all: FLAME ships its model (``generic_model.pkl``, ``flame2023*.pkl``) and its
region masks (``FLAME_masks.pkl``) only as pickles, some written by Python 2 with ``chumpy``
and ``scipy.sparse`` objects inside. A plain :func:`pickle.load` executes whatever callable the
file names, so loading a file from the internet that way is running that file as a program.

This module is the only place in the package that touches :mod:`pickle`. It uses an unpickler
whose :meth:`~SafeUnpickler.find_class` answers from a fixed whitelist:

* numpy array / dtype / scalar reconstruction (the callables numpy's own pickles name),
* ``builtins`` container types that plain data needs (``set``, ``frozenset``, ``complex``,
  ``slice``) and ``_codecs.encode`` restricted to turning a latin-1 text back into bytes
  (how Python 3 writes ``bytes`` at protocol <= 2),
* ``copyreg._reconstructor`` / ``copy_reg._reconstructor`` only for classes of this whitelist,
* every ``chumpy.*`` name and the ``scipy.sparse`` CSC/CSR/COO matrix classes - mapped to inert
  stub classes defined here that merely record their pickled state (chumpy and scipy are never
  imported, and need not be installed).

Any other global raises :class:`UnsafePickleError` before it is looked up, so nothing outside
the whitelist is imported or called. :func:`safe_load` then converts the stubs into numpy arrays
(chumpy ``Ch`` objects from their ``x`` state, a few trivial chumpy ops by evaluating them,
sparse matrices densified) and returns plain dicts / lists / numpy arrays. What that conversion may
allocate is capped: all the arrays the stubs of one file make hold at most
:data:`MAX_DENSE_ELEMENTS` values together (a chumpy op that broadcasts two small operands to a huge
array is refused before it is computed), and a stub referenced many times is converted once.

Python 2 pickles are read with ``encoding='latin1'`` (numpy's documented way of reading the raw
array bytes stored as Python 2 ``str``).
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from agora_core.types.errors import AgoraError

__all__ = ["UnsafePickleError", "PickleConversionError", "SafeUnpickler", "safe_load", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that is not on the whitelist (it was neither imported nor called)."""


class PickleConversionError(AgoraError):
    """A whitelisted stub (chumpy expression, sparse matrix) could not be turned into an array."""


# ----------------------------------------------------------------------------------- stubs
class _Stub:
    """Inert stand-in for a foreign class: records constructor args and pickled state, runs nothing."""

    _qualified_name = "stub"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        obj = super().__new__(cls)
        obj._args = args
        obj._state = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # called by REDUCE on the class
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            merged = dict(state[0] or {})  # (dict, slots-dict) form
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            raise PickleConversionError(
                f"{self._qualified_name}: unexpected pickled state of type {type(state).__name__}"
            )
        self._state = state

    def __repr__(self) -> str:
        return f"<{self._qualified_name} stub with keys {sorted(self._state)}>"


class ChumpyStub(_Stub):
    """Stand-in for any ``chumpy`` class; converted from state ``x`` or a trivial op's terms."""


class SparseStub(_Stub):
    """Stand-in for a ``scipy.sparse`` CSC/CSR/COO matrix; converted to a dense array."""

    format = "csc"


MAX_DENSE_ELEMENTS = 50_000_000  # all arrays the stubs of one file make (FLAME's are about 7 million values)

_stub_cache: dict[tuple[str, str], type] = {}


def _stub_class(base: type, module: str, name: str, **attrs: Any) -> type:
    key = (module, name)
    if key not in _stub_cache:
        _stub_cache[key] = type(name, (base,), {"_qualified_name": f"{module}.{name}", **attrs})
    return _stub_cache[key]


# ----------------------------------------------------------------------------------- whitelist
def _numpy_attr(submodule: str, name: str) -> Any:
    """Fetch a numpy internal from ``numpy._core`` (numpy 2) or ``numpy.core`` (numpy 1)."""
    import importlib

    for mod in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")


def _latin1_encode(text: Any, encoding: str = "latin1", *rest: Any) -> bytes:
    """The only use of ``_codecs.encode`` in data pickles: Python 3 bytes written at protocol <= 2."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError("refusing _codecs.encode call other than (str, 'latin1')")
    return text.encode("latin1")


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` restricted to the whitelisted stub classes."""
    if not (isinstance(cls, type) and issubclass(cls, _Stub)) or base is not object:
        raise UnsafePickleError(f"refusing copyreg._reconstructor for {cls!r}: not a whitelisted type")
    return cls.__new__(cls)


_NUMPY_GLOBALS = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}
_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice, "object": object}
_SPARSE_MODULES = {
    "scipy.sparse",
    "scipy.sparse.csc", "scipy.sparse._csc",
    "scipy.sparse.csr", "scipy.sparse._csr",
    "scipy.sparse.coo", "scipy.sparse._coo",
    "scipy.sparse._arrays",
}
_SPARSE_NAMES = {
    "csc_matrix": "csc", "csc_array": "csc",
    "csr_matrix": "csr", "csr_array": "csr",
    "coo_matrix": "coo", "coo_array": "coo",
}


def _normalise(module: str, name: str) -> tuple[str, str]:
    """Apply Python 2 -> 3 renames (``copy_reg``, ``__builtin__``) the default unpickler applies."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _whitelisted(module: str, name: str) -> Any | None:
    """The object a whitelisted global resolves to, or ``None`` when it is not whitelisted."""
    if module in ("numpy", "numpy.core", "numpy._core") and name in ("ndarray", "dtype"):
        return getattr(np, name)
    for prefix in ("numpy.core.", "numpy._core."):
        if module.startswith(prefix) and (module[len(prefix):], name) in _NUMPY_GLOBALS:
            return _numpy_attr(module[len(prefix):], name)
    if module == "builtins" and name in _BUILTINS:
        return _BUILTINS[name]
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    if module == "copyreg" and name == "_reconstructor":
        return _safe_reconstructor
    if module == "chumpy" or module.startswith("chumpy."):
        return _stub_class(ChumpyStub, module, name)
    if module in _SPARSE_MODULES and name in _SPARSE_NAMES:
        return _stub_class(SparseStub, module, name, format=_SPARSE_NAMES[name])
    return None


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only whitelisted globals (see the module docstring)."""

    def __init__(self, file: BinaryIO, *, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1", fix_imports=True)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _whitelisted(*_normalise(module, name))
        if obj is None:
            raise UnsafePickleError(f"refusing to load {module}.{name} from {self.source}: not a whitelisted type")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r} in {self.source}")


# ----------------------------------------------------------------------------------- conversion
class _Budget:
    """What converting the stubs of one pickle may allocate in all, and the stubs already converted.

    A chumpy operation broadcasts its operands (a few bytes in the file can describe a huge array)
    and a pickle can reference one operation many times; every array a stub makes is counted against
    :data:`MAX_DENSE_ELEMENTS`, and each stub object is converted once.
    """

    def __init__(self, limit: int = MAX_DENSE_ELEMENTS) -> None:
        self.limit = limit
        self.left = limit
        self.done: dict[int, tuple[Any, np.ndarray]] = {}

    def spend(self, count: int, what: str) -> None:
        if count > self.left:
            raise PickleConversionError(
                f"{what} would make {count:,} values, more than the {self.limit:,} all arrays of a head-model "
                "file may hold together (refused: a crafted file can describe a huge array in a few bytes)"
            )
        self.left -= count


def _to_array(value: Any, budget: _Budget) -> np.ndarray:
    value = to_plain(value, budget)
    return value if isinstance(value, np.ndarray) else np.asarray(value)


def _broadcast_size(stub: ChumpyStub, a: np.ndarray, b: np.ndarray) -> int:
    try:
        return int(np.prod(np.broadcast_shapes(a.shape, b.shape), dtype=np.int64))
    except ValueError:
        raise PickleConversionError(
            f"chumpy {stub._qualified_name}: operands of shapes {list(a.shape)} and {list(b.shape)} do not broadcast"
        ) from None


def _chumpy_to_array(stub: ChumpyStub, budget: _Budget) -> np.ndarray:
    """Value of a chumpy object: ``Ch.x`` or a small set of elementwise / reshaping ops."""
    s, op = stub._state, type(stub).__name__
    binary: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    }
    if op in binary and "a" in s and "b" in s:
        a, b = _to_array(s["a"], budget), _to_array(s["b"], budget)
        budget.spend(_broadcast_size(stub, a, b), f"chumpy {stub._qualified_name}")
        return binary[op](a, b)
    if op == "negative" and "x" in s:
        x = _to_array(s["x"], budget)
        budget.spend(x.size, f"chumpy {stub._qualified_name}")
        return -x
    if op == "reshape" and "a" in s and "newshape" in s:
        return np.reshape(_to_array(s["a"], budget), s["newshape"])
    if op == "transpose" and "a" in s:
        return np.transpose(_to_array(s["a"], budget), s.get("axes"))
    if "x" in s:
        return _to_array(s["x"], budget)
    raise PickleConversionError(
        f"cannot evaluate chumpy object {stub._qualified_name} (state keys {sorted(s)}); "
        "re-save the file with plain numpy arrays"
    )


def _sparse_shape(state: dict) -> tuple[int, int]:
    shape = state.get("_shape", state.get("shape"))
    if shape is None:
        raise PickleConversionError("sparse matrix without a shape in its pickled state")
    return int(shape[0]), int(shape[1])


def _sparse_to_array(stub: SparseStub, budget: _Budget) -> np.ndarray:
    """Dense copy of a pickled CSC/CSR/COO matrix (state ``data``, ``indices``/``indptr`` or ``row``/``col``)."""
    s = stub._state
    rows, cols = _sparse_shape(s)
    if rows < 0 or cols < 0 or rows * cols > MAX_DENSE_ELEMENTS:
        raise PickleConversionError(
            f"sparse matrix {stub._qualified_name} of shape {rows}x{cols} is too large to densify"
        )
    budget.spend(rows * cols, f"sparse matrix {stub._qualified_name} of shape {rows}x{cols}")
    data = _to_array(s.get("data"), budget)
    dense = np.zeros((rows, cols), dtype=data.dtype if data.dtype != object else np.float64)
    try:
        if stub.format == "coo":
            r, c = (s["coords"] if "coords" in s else (s["row"], s["col"]))
            np.add.at(dense, (np.asarray(r, np.int64), np.asarray(c, np.int64)), data)
            return dense
        indices = np.asarray(_to_array(s["indices"], budget), np.int64)
        indptr = np.asarray(_to_array(s["indptr"], budget), np.int64)
    except KeyError as exc:
        raise PickleConversionError(f"sparse matrix {stub._qualified_name} lacks {exc}") from None
    major = rows if stub.format == "csr" else cols
    if len(indptr) != major + 1 or indptr[-1] > len(indices) or len(indices) != len(data):
        raise PickleConversionError(f"sparse matrix {stub._qualified_name}: inconsistent indices/indptr/data")
    owner = np.repeat(np.arange(major), np.diff(indptr))
    if stub.format == "csr":
        np.add.at(dense, (owner, indices[: len(owner)]), data[: len(owner)])
    else:
        np.add.at(dense, (indices[: len(owner)], owner), data[: len(owner)])
    return dense


def _convert_stub(stub: _Stub, budget: _Budget) -> np.ndarray:
    """A stub's array, converted once per stub object however often the pickle references it."""
    key = id(stub)
    if key not in budget.done:
        array = _chumpy_to_array(stub, budget) if isinstance(stub, ChumpyStub) else _sparse_to_array(stub, budget)
        budget.done[key] = (stub, array)  # the stub is kept so that its id is not reused meanwhile
    return budget.done[key][1]


def to_plain(value: Any, budget: _Budget | None = None) -> Any:
    """Recursively replace stubs with numpy arrays inside dicts, lists and tuples (all the arrays the
    stubs make counted against one :data:`MAX_DENSE_ELEMENTS` budget)."""
    budget = _Budget() if budget is None else budget
    if isinstance(value, (ChumpyStub, SparseStub)):
        return _convert_stub(value, budget)
    if isinstance(value, dict):
        return {k: to_plain(v, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v, budget) for v in value]
    if isinstance(value, tuple):
        return tuple(to_plain(v, budget) for v in value)
    if isinstance(value, np.ndarray) and value.dtype == object:
        out = np.empty(value.shape, dtype=object)
        for idx, item in np.ndenumerate(value):
            out[idx] = to_plain(item, budget)
        return out
    return value


# ----------------------------------------------------------------------------------- entry points
def safe_load(path_or_file: str | os.PathLike | BinaryIO) -> Any:
    """Unpickle a file with the whitelisting unpickler and return plain dicts / numpy arrays.

    Raises :class:`UnsafePickleError` for any non-whitelisted global (nothing is executed),
    :class:`PickleConversionError` for stubs that cannot be converted, and the usual
    ``pickle.UnpicklingError`` / ``EOFError`` for corrupt data.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        source = os.fspath(path_or_file)
        with open(source, "rb") as fh:
            return to_plain(SafeUnpickler(fh, source=source).load())
    source = getattr(path_or_file, "name", "<file>")
    return to_plain(SafeUnpickler(path_or_file, source=str(source)).load())


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """:func:`safe_load` for an in-memory pickle."""
    return to_plain(SafeUnpickler(io.BytesIO(data), source=source).load())
