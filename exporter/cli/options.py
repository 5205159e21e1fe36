"""What the command lines share: the model options, user-error handling and output checks.

**Model options.** Every command that runs the generator (``agora-export preview``, ``gallery``,
``ply``, ``onnx``, ``bundle``) takes the same options, declared once as the fields of
:class:`ModelOptions`, each with its typer option in the field's metadata. Such a command takes one
parameter ``model: ModelOptions = MODEL_DEFAULTS`` and is decorated with :func:`model_options`,
which puts one ``--option`` per field into the command's signature (where ``model`` stood) and
hands the command the values as one :class:`ModelOptions`. A new model option is one new field
here (and its use in :meth:`ModelOptions.load`); every model command gets it.

**User errors.** :func:`user_errors` turns the user-facing exceptions (:class:`AgoraError` and its
subclasses, unsafe pickles, missing files) into one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agora_core.generator.config import DEFAULT_PRESET, TRUNCATION_PSI
from agora_core.heads.sources import BUILTIN_HEAD
from agora_core.types.errors import AgoraError

if TYPE_CHECKING:
    from agora_core.generator.model import AgoraGenerator, IdentityCache


def _option(help_text: str, **kwargs: Any) -> dict:
    """Field metadata: the keyword arguments of the field's ``typer.Option``."""
    return {"typer": {"help": help_text, **kwargs}}


@dataclass(frozen=True)
class ModelOptions:
    """Which generator a command runs and how it draws identities (one typer option per field)."""

    checkpoint: Path | None = field(default=None, metadata=_option(
        "Generator checkpoint (.pt written by agora). Default: the built-in trained model (built-in head, "
        "preset small), else an untrained generator from --preset/--init-seed."))
    head: str = field(default=BUILTIN_HEAD, metadata=_option(
        "Head model: 'builtin' (ships with agora) or the path of your FLAME generic_model.pkl / flame2023.pkl / .npz."))
    preset: str = field(default=DEFAULT_PRESET, metadata=_option(
        "Generator preset when no checkpoint is given (see `agora-export presets`)."))
    init_seed: int = field(default=0, metadata=_option(
        "Seed of an untrained generator's random weights (used only where no trained model applies)."))
    truncation: float | None = field(default=None, metadata=_option(
        "Truncation psi of the identity latent (1 = none). Default: the model's own - 1 for the built-in model "
        f"(every latent is a teacher identity), {TRUNCATION_PSI} for other models.", min=0.0, max=1.0))
    gaussians: int | None = field(default=None, metadata=_option(
        "Sample the model's UV maps at a lattice of about this many Gaussians (default: the model's own count, "
        "64,922 for the built-in model, the paper's ~65K; e.g. 16000 or 45000 for a lighter avatar, 235000 for "
        "the paper's larger scale).", min=100, max=2_000_000))

    def load(self) -> AgoraGenerator:
        """The head model and generator these options name (:func:`agora_core.generator.checkpoint.load_model`)."""
        from agora_core.generator.checkpoint import load_model

        return load_model(self.checkpoint, self.head, self.preset, self.init_seed, self.gaussians)

    def identity(self, generator: AgoraGenerator, seed: int) -> IdentityCache:
        """The identity branch of ``seed`` at these options' truncation."""
        from agora_core.generator.identities import identity_from_seed

        return identity_from_seed(generator, seed, self.truncation)


MODEL_DEFAULTS = ModelOptions()


def option_type(name: str) -> Any:
    """``Annotated[type, typer.Option(...)]`` of the :class:`ModelOptions` field ``name`` (for a command
    that takes that one option on its own, e.g. ``agora-train run --head``)."""
    spec = {f.name: f for f in fields(ModelOptions)}[name]
    return Annotated[typing.get_type_hints(ModelOptions)[name], typer.Option(**spec.metadata["typer"])]


CheckpointOpt = option_type("checkpoint")
HeadOpt = option_type("head")


def model_options(command: Callable) -> Callable:
    """Replace ``command``'s parameter ``model: ModelOptions`` by one typer option per field (see the
    module docstring); the command is called with ``model=ModelOptions(...)``."""
    signature = inspect.signature(command, eval_str=True)
    params = list(signature.parameters.values())
    at = [p.name for p in params].index("model")
    names = [f.name for f in fields(ModelOptions)]
    options = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                 annotation=option_type(f.name)) for f in fields(ModelOptions)]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        model = ModelOptions(**{n: kwargs.pop(n) for n in names if n in kwargs})
        return command(*args, model=model, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params[:at] + options + params[at + 1:])
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
    return wrapper


class Quant(str, Enum):
    """Storage of an ``.agm`` bundle's bases."""

    int8 = "int8"
    fp16 = "fp16"


# The storage options of every command that writes a bundle (`bundle`, `import-official`): declared once.
# the ONNX baseline of `serve --bench` and `site --bench`
BaselineOnnxOpt = Annotated[Path | None, typer.Option(
    help="With --bench: use this `agora-export onnx` file as the baseline instead of building one (needs "
         "--baseline-inputs).")]
BaselineInputsOpt = Annotated[Path | None, typer.Option(
    help="With --baseline-onnx: its identity inputs (`agora-export onnx --features-out` .npz).")]
QuantOpt = Annotated[Quant, typer.Option(help="Storage of the bases: int8 with per-basis scales, or fp16.")]
NeutralOpt = Annotated[str, typer.Option(
    help="Storage of the neutral attributes (.agm 1.1): q8 (positions 16-bit, the rest 8-bit), q12 "
    "(log-scales and SH DC 16-bit too), q16 (all 16-bit), or float (f32, as .agm 1.0).")]
MlpWeightsOpt = Annotated[str, typer.Option(
    help="Storage of the MLP weights: fp16, int8 (per-row scales) or f32.")]
BudgetDbOpt = Annotated[float | None, typer.Option(
    min=0.0, help="Fidelity budget: pick the sparse tolerance (ranks per group, sparse sets) and every "
    "quantisation so that the stored bundle renders within this many dB of the unquantised blend "
    "(replaces --quant, --neutral, --mlp-weights and --sparse-tolerance).")]
SparseOpt = Annotated[bool, typer.Option(
    "--sparse/--dense", help="Store bases only for Gaussians that visibly move (per group).")]


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def user_errors(fn: Callable) -> Callable:
    """Turn the user-facing exception types into a one-line error with exit status 2."""
    from agora_core.heads.safe_pickle import UnsafePickleError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (AgoraError, UnsafePickleError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            fail(str(exc))

    return wrapper


def require_suffix(path: Path, suffix: str) -> None:
    """An output path must end in ``suffix`` and be writable now: not a directory, a file name the file
    system accepts, in a folder (that may not exist yet) where this user can create files. Commands call
    this first, so a bad output is refused before minutes of work, naming the user's path."""
    from agora_core.types.io import check_writable

    if path.suffix.lower() != suffix:
        raise AgoraError(f"output must be a {suffix} file, got '{path}'")
    if path.parent.exists() and not path.parent.is_dir():
        raise AgoraError(f"cannot write '{path}': '{path.parent}' is not a directory")
    check_writable(path)


__all__ = ["BudgetDbOpt", "CheckpointOpt", "HeadOpt", "MODEL_DEFAULTS", "MlpWeightsOpt", "ModelOptions", "NeutralOpt",
           "Quant", "QuantOpt", "SparseOpt", "fail", "model_options", "option_type", "require_suffix", "user_errors"]
