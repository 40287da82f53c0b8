"""Tiny generated image datasets for tests (nothing touches the network)."""

from xtune.data._synthetic import make_image_folder

__all__ = ["make_image_folder"]
