"""Module-level import cycles inside src/zturbo: grimp's import graph (imports under
``if TYPE_CHECKING:`` left out), split into strongly connected components.

Prints each group of modules that import each other, directly or through others, and exits
1 if there is one. Run: ``PYTHONPATH=src .venv/bin/python scripts/import_cycles.py``.
"""

from __future__ import annotations

import sys

import grimp


def import_graph(package: str = "zturbo") -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports at module level."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def main() -> int:
    found = cycles(import_graph())
    for group in found:
        print(f"cycle of {len(group)}: {', '.join(group)}")
    print(f"{len(found)} import cycle(s) in zturbo")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
