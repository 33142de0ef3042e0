"""Builds the compiled serving loops (training/_kernels.pyx, Cython); the rest of
the project's metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("training._kernels", ["training/_kernels.pyx"], language="c++")])
