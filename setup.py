"""Build hook (the project's metadata is in pyproject.toml).

The package `kdbench.suites` is the folder benchmarks/, which also holds the repository's benchmark scripts
(benchmarks/*.py). setuptools packs every *.py of a package's folder as a module; the suites package is data
only (its *.toml suite files and *.json references, `package-data` in pyproject.toml), so its modules are
left out here.
"""

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_ONLY = {"kdbench.suites"}


class BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        return [] if package in DATA_ONLY else super().find_package_modules(package, package_dir)


setup(cmdclass={"build_py": BuildPy})
