"""Packaging for sipstatus: the library (sipstatus) and the agent (agent).

Debian builds it with dh-python / pybuild (see packaging/); the tests install
it into a virtual environment with `pip install -e .`.

`pip install sipstatus` gives the library and the `sipstatus` command (proxy
side); `pip install 'sipstatus[agent]'` adds what `sipstatus-agent` needs.
The ranges are the ones the tests prove: the low end is what Debian 12 ships
(requirements.txt pins it, `./dev test`), the high end the newest releases
(`./dev newest`), below the next series, which nothing has tested yet
(pyroute2 changed its API within 0.x before).
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
    # No package_data: the code validates bodies itself (sipstatus/codec.py); the
    # JSON Schemas are spec/load-status.schema.json and spec/load-affinity.schema.json,
    # read only by the tests from the checkout.
    install_requires=["dnspython>=2.3.0,<3"],
    extras_require={"agent": ["psutil>=5.9.4,<8", "pyroute2>=0.7.2,<0.10"]},
    entry_points={
        "console_scripts": [
            "sipstatus = sipstatus.cli:main",
            "sipstatus-agent = agent.cli:main",
        ]
    },
)
