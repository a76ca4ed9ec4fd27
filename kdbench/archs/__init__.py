"""Real-scale architectures, each registered in `kdbench.models.MODELS` by its own module.

Every model takes images in [0, 1], normalizes inside and exposes `forward_stages(x) -> (logits, [stage
outputs])`. The modules are imported explicitly here, and this package is imported explicitly by
`kdbench.models`, so registration never depends on a stray import.
"""

from . import (
    lenet,  # noqa: F401
    mobilenet,  # noqa: F401
    resnet,  # noqa: F401
    wide_resnet,  # noqa: F401
)
