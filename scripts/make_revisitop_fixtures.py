#!/usr/bin/env python3
"""Writes tiny Revisited Oxford/Paris-style ground-truth pickles for the
loader and metric tests (the real gnd_roxford5k.pkl / gnd_rparis6k.pkl and
their images are not available here). Standard library only; run by hand:

    python3 scripts/make_revisitop_fixtures.py

Layout, as in revisitop's files: {'imlist': [...], 'qimlist': [...],
'gnd': [{'bbx': [x1, y1, x2, y2], 'easy': [...], 'hard': [...], 'junk': [...]}]}.
Written twice: protocol 2 with Python-2-style byte strings for names (as
pickles made by Python 2 read back), and protocol 4 with str.
"""
import pickle
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "engine" / "tests" / "fixtures" / "revisitop"

gnd = {
    "imlist": [f"db_{i:02d}" for i in range(8)],
    "qimlist": ["query_a", "query_b", "query_c"],
    "gnd": [
        {"bbx": [10.5, 20.0, 110.25, 220.0], "easy": [0, 1], "hard": [2], "junk": [5]},
        {"bbx": [0.0, 0.0, 50.0, 60.0], "easy": [], "hard": [3, 4], "junk": []},
        {"bbx": [1, 2, 3, 4], "easy": [6], "hard": [], "junk": [7, 0]},
    ],
}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gnd_tiny_p4.pkl").write_bytes(pickle.dumps(gnd, protocol=4))
    legacy = dict(gnd, imlist=[s.encode() for s in gnd["imlist"]], qimlist=[s.encode() for s in gnd["qimlist"]])
    (OUT / "gnd_tiny_p2.pkl").write_bytes(pickle.dumps(legacy, protocol=2))
    print("wrote", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
