#!/usr/bin/env python3
"""Symbol order for `trellis-proxy` from callgrind profiles (see `generate`).

Reads callgrind output files (`--demangle=no`), keeps the functions of the
given object (the trellis-proxy executable) that executed at least one
instruction, and prints their mangled names: first the code most proxies
ran (one profile per proxy process: startup, the HTTP/1.1 path...), then
code only some configurations use (TLS, HTTP/2, gRPC, TCP), each group
most executed first. lld places them at the start of .text in that order
(`--symbol-ordering-file`), so the code a proxy runs sits together and the
kernel's 64 KiB fault-around windows map little else; a plain HTTP/1.1
sidecar then touches a prefix of that region and not the TLS or HTTP/2
code interleaved with it.

Usage: callgrind_order.py OBJECT_PATH callgrind.out... > trellis-proxy.order
"""

import collections
import re
import sys

NAME = re.compile(r"^(ob|fl|fi|fe|fn|cob|cfi|cfl|cfn)=\((\d+)\)(?: (.*))?$")


def parse(path: str, obj: str, cost: collections.Counter) -> None:
    names: dict[tuple[str, str], str] = {}
    cur_ob = cur_fn = None
    skip_next = False  # the line after `calls=` is the call's inclusive cost
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = NAME.match(line)
            if m:
                kind, ident, name = m.groups()
                space = "ob" if kind in ("ob", "cob") else ("fn" if kind in ("fn", "cfn") else "fl")
                if name is not None:
                    names[(space, ident)] = name
                if kind == "ob":
                    cur_ob = names.get(("ob", ident))
                elif kind == "fn":
                    cur_fn = names.get(("fn", ident))
                    if cur_ob == obj and cur_fn:
                        cost[cur_fn] += 0  # executed, even if its cost lines follow later
                continue
            if line.startswith("calls="):
                skip_next = True
                continue
            if skip_next:
                skip_next = False
                continue
            if cur_ob == obj and cur_fn and line[:1] in "0123456789+-*":
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    cost[cur_fn] += int(parts[1])


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    obj, files = sys.argv[1], sys.argv[2:]
    cost: collections.Counter = collections.Counter()
    profiles: collections.Counter = collections.Counter()
    for path in files:
        one: collections.Counter = collections.Counter()
        parse(path, obj, one)
        # callgrind marks recursion levels and cycles as name'2, name'3 ...
        names = {re.sub(r"'\d+$", "", n) for n in one}
        for n in names:
            profiles[n] += 1
        for n, c in one.items():
            cost[re.sub(r"'\d+$", "", n)] += c
    for name in sorted(profiles, key=lambda n: (-profiles[n], -cost[n], n)):
        if not name.startswith("0x"):
            print(name)


if __name__ == "__main__":
    main()
