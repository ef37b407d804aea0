"""Connectivity of the tile overlap graph (a disjoint-set forest), for §3.4 pruning and the
corrected photometry's components."""
from __future__ import annotations

from typing import Iterable


class DisjointSets:
    """Union-find over ``0 .. n-1`` with path halving."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def n_groups(self, members: Iterable[int]) -> int:
        return len({self.find(t) for t in members})

    def groups(self) -> list[list[int]]:
        """Every group as a sorted list, groups ordered by their first member."""
        out: dict[int, list[int]] = {}
        for t in range(len(self.parent)):
            out.setdefault(self.find(t), []).append(t)
        return sorted(out.values(), key=lambda g: g[0])
