"""Architectures (registered by name), checkpoints, and the batch-norm-folded evaluation copy.

Importing the package registers every entry of its registry."""

from . import (
    lenet,  # noqa: F401 - registers its entries
    mobilenet,  # noqa: F401 - registers its entries
    resnet,  # noqa: F401 - registers its entries
    wide_resnet,  # noqa: F401 - registers its entries
)
