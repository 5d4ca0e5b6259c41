"""Write the public API of an installed python-slimta as JSON.

    PYTHONPATH=bench/shim .bench/slimta-orig/bin/python scripts/api_snapshot.py > test/data/python_slimta_api.json
    PYTHONPATH=bench/shim .bench/slimta-orig/bin/python scripts/api_snapshot.py upper \
        > test/data/python_slimta_api_upper.json

The second form covers the modules above the relay layer that this package has
implemented so far (the list grows as they land).

The snapshot holds facts only (module names, public names, parameter names, kinds
and defaults); test/unit/test_api_compat.py checks that slimta-relay keeps them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys

MODULES = [
    "slimta.core", "slimta.envelope", "slimta.policy", "slimta.relay", "slimta.relay.pool",
    "slimta.relay.blackhole", "slimta.relay.smtp", "slimta.relay.smtp.client",
    "slimta.relay.smtp.lmtpclient", "slimta.relay.smtp.static", "slimta.relay.smtp.mx",
    "slimta.relay.http", "slimta.relay.pipe", "slimta.smtp", "slimta.smtp.reply",
    "slimta.smtp.client", "slimta.smtp.extensions", "slimta.smtp.datasender", "slimta.util",
    "slimta.util.deque", "slimta.util.dns", "slimta.http", "slimta.logging",
]


#: Modules above the relay layer implemented here (the rest of API-UPPER.md is to come).
UPPER_MODULES = [
    "slimta.queue", "slimta.queue.dict", "slimta.queue.proxy", "slimta.bounce",
    "slimta.policy.headers", "slimta.policy.split", "slimta.policy.forward",
    "slimta.logging.log", "slimta.logging.socket", "slimta.logging.subprocess",
    "slimta.logging.http", "slimta.logging.queuestorage",
    "slimta.edge.wsgi", "slimta.http.wsgi", "slimta.util.proxyproto", "slimta.util.system",
    "slimta.util.ptrlookup", "slimta.util.bytesformat", "slimta.util.dnsbl",
    "slimta.policy.spamassassin", "slimta.cloudstorage",
]


def params(obj: object) -> list[list[str]] | None:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name, repr(p.default) if p.default is not p.empty else ""]
            for p in sig.parameters.values()]


def describe(module_name: str) -> dict:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [
        n for n in vars(module) if not n.startswith("_")
        and getattr(getattr(module, n), "__module__", None) == module_name
    ]
    out: dict = {}
    for name in names:
        obj = getattr(module, name)
        entry: dict = {"kind": type(obj).__name__}
        if inspect.isclass(obj):
            entry["kind"] = "class"
            entry["bases"] = [b.__name__ for b in obj.__mro__[1:]]
            members = {}
            for attr, value in vars(obj).items():
                if attr.startswith("__") and attr != "__init__":
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if inspect.isfunction(value):
                    members[attr] = params(value)
                elif isinstance(value, property):
                    members[attr] = "property"
                elif not attr.startswith("_"):
                    members[attr] = "attribute"
            entry["members"] = members
        elif callable(obj):
            entry["kind"] = "function"
            entry["params"] = params(obj)
        out[name] = entry
    return {"all": list(names), "names": out}


def main() -> None:
    modules = UPPER_MODULES if sys.argv[1:] == ["upper"] else MODULES
    json.dump({m: describe(m) for m in modules}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
