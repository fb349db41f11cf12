"""Package discovery for the two package roots (metadata, dependencies and entry points: setup.cfg).

``srt`` (the core) lives at the top level; the built-in plugins live in ``plugins/srt_builtin`` and
install as the package ``srt_builtin``. setup.cfg's ``find:`` searches one root only, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["srt", "srt.*"])
    + find_packages("plugins", include=["srt_builtin", "srt_builtin.*"]),
    package_dir={"srt_builtin": "plugins/srt_builtin"},
)
