from setuptools import find_namespace_packages, setup

setup(
    name="slimta-relay",
    version="0.1.0",
    description="gevent mail relays: a drop-in replacement for python-slimta's relay layer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["slimta.*"]),
    package_data={"": ["py.typed"]},
    install_requires=["gevent>=23", "pycares>=4.0", "dnspython>=2.3"],
    extras_require={
        "test": [
            "pytest",
            "mock",
            "hypothesis",
            "aiosmtpd",
            "dnslib",
            "cryptography",
            "dkimpy",
            "redis>=4.5",
            "celery[redis]>=5.3,<6",
        ],
        "redis": ["redis>=4.5"],
        "celery": ["celery[redis]>=5.3,<6", "redis>=4.5"],
        "dev": ["ruff", "mypy", "sphinx"],
    },
    entry_points={"console_scripts": ["slimta-relay = slimta.cli.relay:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Email :: Mail Transport Agents",
    ],
)
