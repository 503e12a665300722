"""What pyproject.toml cannot say: the Feast repo at the top of the source tree (feature_repo/,
where Feast users look for it) ships inside the package as ``seqrec.feature_repo``, built from
that one copy."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["seqrec*"]), "seqrec.feature_repo"],
    package_dir={"seqrec.feature_repo": "feature_repo"},
)
