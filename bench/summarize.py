"""Turn saved ``bench/run.py`` outputs into one markdown table (the README's format).

    python bench/summarize.py /tmp/bench-2k.txt /tmp/bench-bulk.txt ...

Each cell: the median rate, CPU microseconds per message, and for peers how many times
slimta-relay's rate theirs is ("4.5x" = slimta-relay is 4.5 times faster).
"""

from __future__ import annotations

import re
import sys

LABELS = {
    "reuse1": "one reused connection (`pool_size=1`)",
    "reuse20": "20 reused connections",
    "noreuse20": "20 connections, one per message",
    "big": "one 20 MiB message",
}
PEERS = ("python-slimta", "aiosmtplib", "smtp-source")
ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<rate>[\d.]+)(?P<extra>[^|]*)\| [^|]* \| "
                 r"(?P<cpu>\d+) \| (?P<ratio>[^|]+) \|$")


def parse(path: str) -> tuple[str, dict[str, dict[str, dict[str, str]]]]:
    profile = "?"
    scenario = None
    tables: dict[str, dict[str, dict[str, str]]] = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"# profile (\S+):", line)
            if m:
                profile = m.group(1)
            m = re.match(r"## (\w+): ", line)
            if m:
                scenario = m.group(1)
                tables[scenario] = {}
                continue
            m = ROW.match(line)
            if m and scenario is not None:
                tables[scenario][m["name"]] = m.groupdict()
    return profile, tables


def cell(row: dict[str, str] | None, scenario: str, ours: bool) -> str:
    if row is None:
        return ""
    rate = float(row["rate"])
    unit = "MB/s" if scenario == "big" else "msg/s"
    text = f"{rate:,.0f} {unit}" if rate >= 50 else f"{rate:,.1f} {unit}"
    cpu = int(row["cpu"])
    if scenario == "big":
        text += f", {cpu / 1000:,.0f} ms CPU"
        growth = re.search(r"peak RSS growth ([\d.]+) MB", row["extra"])
        if growth:
            text += f", peak RSS +{float(growth.group(1)):.1f} MB"
    else:
        text += f", {cpu:,} µs CPU/msg"
    if ours:
        return f"**{text}**"
    ratio = row["ratio"].strip()
    return f"{text} ({ratio})" if ratio != "-" else text


def main() -> None:
    print("| profile | scenario | slimta-relay | python-slimta 5.0.5 | aiosmtplib | "
          "smtp-source (C) |")
    print("|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        profile, tables = parse(path)
        for scenario, rows in tables.items():
            label = LABELS.get(scenario, scenario)
            cells = [cell(rows.get("slimta-relay"), scenario, True)]
            cells += [cell(rows.get(peer), scenario, False) for peer in PEERS]
            print(f"| `{profile}` | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
