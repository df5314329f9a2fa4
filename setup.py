"""Package list for setuptools (the rest of the configuration is in pyproject.toml).

The exporters live in the repo's top-level ``export/`` folder but install as
``realtime.export``, so the project claims no generic top-level name in site-packages.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["realtime", "realtime.*"]), "realtime.export"],
    package_dir={"realtime.export": "export"},
)
