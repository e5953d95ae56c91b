#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a circle.

A module (one source file) depends on another when it names it through a
`crate::` or `super::` path (in a `use` line or inline), and on each of its
child modules (it declares them, and a path to the parent reaches them). A
module naming its own ancestor is not counted: a child module is part of its
parent. Any strongly connected group of more than one module is printed.
Test modules (`#[cfg(test)] mod ...` to the end of a file) are skipped.

Usage: scripts/import-cycles.py CRATE_DIR...   (e.g. worker master proto)
"""

import os
import re
import sys


def module_of(src, path):
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def code_of(path):
    text = open(path, encoding="utf-8").read()
    test = re.search(r"^#\[cfg\(test\)\]\s*\n\s*(pub(\(\w+\))? )?mod \w+\s*\{", text, re.M)
    if test:
        text = text[: test.start()]
    text = re.sub(r"//[^\n]*", "", text)
    return text


def expand(prefix, body):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (prefix already split)."""
    out, depth, start = [], 0, 0
    parts = []
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    for part in parts:
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", part, re.S)
        if m:
            head = [p for p in m.group(1).split("::") if p]
            out += expand(prefix + head, m.group(3))
        else:
            name = part.split(" as ")[0].strip()
            out.append(prefix + [p for p in name.split("::") if p])
    return out


def paths_in(code):
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super)(?:::super)*)::([^;]*);", code, re.S):
        paths += expand(m.group(1).split("::"), m.group(2))
    # Inline paths outside `use` lines.
    inline = re.sub(r"\buse\s+[^;]*;", "", code)
    for m in re.finditer(r"\b((?:crate|super)(?:::super)*(?:::\w+)+)", inline):
        paths.append(m.group(1).split("::"))
    return paths


def resolve(module, path, modules):
    """The module a path names: the longest known module prefix, absolute."""
    if path[0] == "crate":
        absolute = path[1:]
    else:
        base = list(module)
        while path and path[0] == "super":
            base = base[:-1]
            path = path[1:]
        absolute = base + path
    for n in range(len(absolute), -1, -1):
        if tuple(absolute[:n]) in modules:
            return tuple(absolute[:n])
    return ()


def cycles(src):
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[module_of(src, path)] = path
    modules = set(files)
    edges = {m: set() for m in modules}
    for module, path in files.items():
        for p in paths_in(code_of(path)):
            target = resolve(module, p, modules)
            if target == module or module[: len(target)] == target:
                continue  # itself or an ancestor
            edges[module].add(target)
    # A parent holds its children (it declares and often re-exports them).
    for module in modules:
        if module:
            edges[module[:-1]].add(module)
    # Tarjan's strongly connected components.
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return modules, edges, out


def name(module):
    return "crate::" + "::".join(module) if module else "crate"


def main(dirs):
    failed = False
    for crate in dirs:
        modules, edges, found = cycles(os.path.join(crate, "src"))
        count = sum(len(e) for e in edges.values())
        print(f"{crate}: {len(modules)} modules, {count} imports between them, {len(found)} circles")
        for group in found:
            failed = True
            print("  circle: " + ", ".join(name(m) for m in group))
            for m in group:
                inside = sorted(name(t) for t in edges[m] if t in group)
                print(f"    {name(m)} -> {', '.join(inside)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["worker", "master", "proto"]))
