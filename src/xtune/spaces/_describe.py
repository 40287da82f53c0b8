"""A JSON-ready description of a space (what `tune space show` prints)."""

from __future__ import annotations

from xtune.spaces._builder import count_flops, count_params
from xtune.spaces._space import SearchSpace


def describe_space(space: SearchSpace, image_size: int = 180, num_classes: int = 2) -> dict:
    """Describe a space: each hyperparameter, the space's size and parameter counts.

    Args:
        space: The space.
        image_size: Square input size for the parameter counts.
        num_classes: Number of classes for the parameter counts.

    Returns:
        ``{"name", "hyperparameters": [{name, group, kind, values, default,
        condition}], "configurations", "architectures", "parameters": {seed,
        smallest, largest}, "image_size", "num_classes"}``.
    """
    from xtune.spaces._config import PRESETS

    shape = (image_size, image_size, 3)
    rows = []
    for spec in space.specs:
        values = list(spec.all_values())
        rows.append({
            "name": spec.name,
            "group": spec.group,
            "kind": "fixed" if len(values) == 1 else type(spec).__name__,
            "values": values if len(values) <= 8 else spec.describe(),
            "default": spec.default,
            "condition": f"{spec.condition[0]} in {list(spec.condition[1])}" if spec.condition else None,
        })
    return {
        "name": space.name,
        "hyperparameters": rows,
        "configurations": space.num_configurations(),
        "architectures": space.num_configurations("architecture"),
        "image_size": image_size,
        "num_classes": num_classes,
        "parameters": {
            "seed": count_params(PRESETS["seed"], shape, num_classes),
            "default": count_params(space.default_config(), shape, num_classes),
            "smallest": count_params(space.extreme_config(largest=False), shape, num_classes),
            "largest": count_params(space.extreme_config(largest=True), shape, num_classes),
        },
        "flops": {
            "seed": count_flops(PRESETS["seed"], shape, num_classes),
            "default": count_flops(space.default_config(), shape, num_classes),
            "smallest": count_flops(space.extreme_config(largest=False), shape, num_classes),
            "largest": count_flops(space.extreme_config(largest=True), shape, num_classes),
        },
    }
