"""The Python API behind the package's face (`kdbench/__init__.py`): the registration calls a plugin uses
(register.py), and `evaluate`, `run`, `load_results` for notebooks and a user's own scripts (python_api.py). It
is the last stage: it may use every other, and only the face imports it."""
