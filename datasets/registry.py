"""Dataset registry: ``DATASETS.NAMES`` -> dataset class, filled by the ``register_dataset`` decorator."""
from __future__ import annotations

from typing import Callable

DATASET_REGISTRY: dict[str, type] = {}


def register_dataset(name: str) -> Callable[[type], type]:
    """Class decorator: make a dataset class available under ``name`` in DATASETS.NAMES."""
    def decorator(cls: type) -> type:
        if name in DATASET_REGISTRY and DATASET_REGISTRY[name] is not cls:
            raise ValueError(f"Dataset name {name!r} is registered twice ({DATASET_REGISTRY[name].__name__}, {cls.__name__})")
        DATASET_REGISTRY[name] = cls
        return cls
    return decorator


def get_dataset_class(name: str) -> type:
    if name not in DATASET_REGISTRY:
        raise KeyError(f"Unknown DATASETS.NAMES {name!r}; registered datasets: {sorted(DATASET_REGISTRY)}")
    return DATASET_REGISTRY[name]
