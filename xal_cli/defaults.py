"""Flag defaults read from where each setting is defined, never written again in a parser.

A flag's default is the default of the dataclass field (``ScoringConfig``, ``RoiTraining``,
``TrainRecipe``, ``Protocol``, ``DataSpec``) or of the keyword parameter (``RunSession``) it
becomes, so changing a default there changes ``xal run --help`` and the run alike.

>>> from xal_core.loop.data_spec import DataSpec
>>> default_of(DataSpec, "pool_size")
5000
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

__all__ = ["default_of"]


def default_of(owner: Any, name: str) -> Any:
    """The default of field ``name`` of dataclass ``owner``, or of keyword parameter ``name`` of a callable."""
    if dataclasses.is_dataclass(owner):
        for field in dataclasses.fields(owner):
            if field.name == name:
                if field.default is not dataclasses.MISSING:
                    return field.default
                if field.default_factory is not dataclasses.MISSING:
                    return field.default_factory()
                break
        raise KeyError(f"{owner.__name__}.{name}: no such field with a default")
    parameter = inspect.signature(owner).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise KeyError(f"{getattr(owner, '__name__', owner)}: no parameter {name!r} with a default")
    return parameter.default
