"""The one build rule pyproject.toml cannot say: the top-level profiles/ folder is installed as
the data package edge_sel.profiles.shipped (every other setting lives in pyproject.toml)."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["edge_sel*"]), "edge_sel.profiles.shipped"],
    package_dir={"edge_sel.profiles.shipped": "profiles"},
)
