"""Packaging for sipstatus: the library (sipstatus) and the agent (agent).

Debian builds it with dh-python / pybuild (see packaging/); the tests install
it into a virtual environment with `pip install -e .`.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    Path(__file__).with_name("sipstatus").joinpath("__init__.py").read_text(),
    re.M,
).group(1)

setup(
    name="sipstatus",
    version=VERSION,
    description="Live load status of Asterisk nodes, delivered to SIP proxies over SIP",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["sipstatus", "sipstatus.*", "agent", "agent.*"]),
    package_data={"sipstatus": ["load-status.schema.json"]},
    install_requires=["dnspython>=2.3"],
    extras_require={"agent": ["psutil>=5.9", "pyroute2>=0.7"]},
    entry_points={
        "console_scripts": [
            "sipstatus = sipstatus.cli:main",
            "sipstatus-agent = agent.cli:main",
        ]
    },
)
