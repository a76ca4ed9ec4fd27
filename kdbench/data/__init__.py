"""Datasets as in-memory tensors: the registry, the loaders of each family, augmentation, corruptions of images.

Importing the package registers every entry of its registry."""

from . import (
    digits,  # noqa: F401 - registers its entries
    torchvision_sets,  # noqa: F401 - registers its entries
    user,  # noqa: F401 - registers its entries
)
