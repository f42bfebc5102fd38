#!/usr/bin/env python3
"""Cross-checks `squire eval` metrics with ir_measures (PyPI) on the TREC run
files and qrels the harness writes.

    pip install ir-measures
    python3 benches/eval_crosscheck.py OUT_DIR [--measures "Success@1 Success@5 Success@10 nDCG@10 AP@50 RR@50"]

Prints, per stage, ir_measures' values next to the harness' (summary.json).
Runs keep the top --keep documents (100 by default), so measures deeper than
that (e.g. MRR over the whole collection) can differ slightly.
"""
import argparse
import json
import os

import ir_measures

ALIASES = {"Success@1": "R@1", "Success@5": "R@5", "Success@10": "R@10", "Success@50": "R@50",
           "AP@50": "AP@50", "nDCG@10": "nDCG@10", "nDCG@50": "nDCG@50", "RR@50": "MRR", "RR@100": "MRR"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--measures", default="Success@1 Success@5 Success@10 nDCG@10 RR@100")
    a = ap.parse_args()
    summary = json.load(open(os.path.join(a.out, "summary.json")))
    qrels = list(ir_measures.read_trec_qrels(os.path.join(a.out, "qrels.txt")))
    measures = [ir_measures.parse_measure(m) for m in a.measures.split()]
    for stage in summary["stages"]:
        run = list(ir_measures.read_trec_run(os.path.join(a.out, f"run-{stage}.trec")))
        got = ir_measures.calc_aggregate(measures, qrels, run)
        ours = summary["per_stage"].get(stage, {})
        print(f"{stage}:")
        for m in measures:
            name = str(m)
            mine = ours.get(ALIASES.get(name, name))
            print(f"  {name:12s} ir_measures {got[m]:.4f}   squire {'' if mine is None else f'{mine:.4f}'}")


if __name__ == "__main__":
    main()
