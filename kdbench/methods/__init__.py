"""Distillation methods: one file per family, each registering its Distiller subclasses in METHODS."""

from .base import METHODS, Batch, Distiller, TeacherSpec, TrainContext, register_method  # noqa: F401

# explicit imports: registration never depends on a stray import
from . import kd  # noqa: F401,E402
from . import pointwise  # noqa: F401,E402
from . import hierarchical  # noqa: F401,E402
from . import multi_teacher  # noqa: F401,E402
from . import noise  # noqa: F401,E402
from . import defensive  # noqa: F401,E402
from . import adversarial  # noqa: F401,E402
from . import dtkd  # noqa: F401,E402
from . import at  # noqa: F401,E402
from . import at_l2  # noqa: F401,E402
from . import trades  # noqa: F401,E402
from . import iad  # noqa: F401,E402
from . import adaad  # noqa: F401,E402
from . import mtard  # noqa: F401,E402
from . import dkd  # noqa: F401,E402
from . import fitnets  # noqa: F401,E402
