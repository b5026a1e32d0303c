#!/usr/bin/env python3
"""The report of scripts/soak.sh, from the files a run left in its directory.

    scripts/soak-report.py DIR

For each fio job NAME (lin, str, orig, snap, canary), DIR holds NAME.json (fio's stdout: a
JSON status report every interval, then the final one), NAME.count ("FAILED LINES": how many
lines of fio's messages reported a verify failure, and how many lines there were) and NAME.log
(the first of those lines); churn.count holds "OPERATIONS FAILED".

A report that cannot be read (text inside it) is counted and skipped, never fatal: the totals
come from the last one that can be read. Prints the throughput per interval, the totals per
job, the canary's failures, the churn and the disk use of the run's files. Exits 1 when a
device other than the canary had a verify failure, a churn operation failed, the canary had
no failure or a count is missing; 0 otherwise.
"""
import json
import os
import re
import sys

JOBS = ["lin", "str", "orig", "snap", "canary"]
TABLE = ["lin", "str", "orig", "snap"]


def status_reports(text):
    """The JSON objects that start a line of text, None for each such start that is unreadable.

    fio starts each report with "{" alone at the start of a line and indents everything
    inside it, so a report that was cut by other text fails to decode and the next one is
    found at the next line that starts with "{". Keeping a None in its place keeps the k-th
    report of every job in the k-th row of the table.
    """
    dec = json.JSONDecoder()
    reports, end = [], 0
    for m in re.finditer(r"^\{", text, re.M):
        if m.start() < end:
            continue
        try:
            obj, end = dec.raw_decode(text, m.start())
        except ValueError:
            reports.append(None)
            continue
        reports.append(obj if has_totals(obj) else None)
    return reports


def has_totals(obj):
    """Whether obj is a report with the figures the report reads."""
    try:
        j = obj["jobs"][0]
        return all(
            isinstance(v, int)
            for v in [j["write"]["io_kbytes"], j["read"]["io_kbytes"], j["total_err"]]
        )
    except (KeyError, IndexError, TypeError):
        return False


def read_count(path, fields):
    """The integers in a count file, or None when it is missing or malformed."""
    try:
        values = [int(v) for v in open(path).read().split()]
    except (OSError, ValueError):
        return None
    return values if len(values) == fields else None


def main(d):
    ok = True
    rows, totals, notes = {}, {}, []
    for job in JOBS:
        try:
            text = open(os.path.join(d, job + ".json"), errors="replace").read()
        except OSError as e:
            text = ""
            notes.append(f"{job}: no status reports ({e.strerror})")
        reports = status_reports(text)
        unreadable = reports.count(None)
        if unreadable:
            notes.append(
                f"{job}: {unreadable} of {len(reports)} status reports unreadable"
                " (other text inside them); the totals are from the last readable one"
            )
        # The rate over each interval is measured by fio's own clock (job_runtime, in ms), so
        # a skipped report or the final, partial interval still gives the right figure.
        prev_kib, prev_ms = 0, 0
        for k, r in enumerate(reports):
            if r is None:
                continue
            j = r["jobs"][0]
            kib, ms = j["write"]["io_kbytes"], j.get("job_runtime", 0)
            row = rows.setdefault(k, {"t": ms / 1000})
            # The final report can come within the same millisecond as the last status report.
            if ms > prev_ms:
                row[job] = (kib - prev_kib) / 1024 / ((ms - prev_ms) / 1000)
            prev_kib, prev_ms = kib, ms
        count = read_count(os.path.join(d, job + ".count"), 2)
        if count is None:
            notes.append(f"{job}: no count of its messages ({job}.count)")
            ok = False
        reports = [r for r in reports if r is not None]
        if not reports:
            ok = False
            totals[job] = {"verify failures": count[0] if count else "unknown"}
            continue
        last = reports[-1]["jobs"][0]
        totals[job] = {
            "MiB written": last["write"]["io_kbytes"] // 1024,
            "MiB verified": last["read"]["io_kbytes"] // 1024,
            "errors": last["total_err"],
            "verify failures": count[0] if count else "unknown",
        }
        if count:
            totals[job]["message lines"] = count[1]

    print("throughput per interval (MiB/s written; the last row may be a partial interval)")
    print("t(s)   " + "  ".join(f"{j:>7}" for j in TABLE))
    for k in sorted(rows):
        # "-": that job's report for this interval could not be read, or no time passed.
        cells = "  ".join(f"{rows[k][j]:7.1f}" if j in rows[k] else f"{'-':>7}" for j in TABLE)
        print(f"{rows[k]['t']:<6.1f} {cells}")
    bad = 0
    for job, t in totals.items():
        print(f"{job}: " + ", ".join(f"{k} {v}" for k, v in t.items()))
        if job != "canary" and isinstance(t["verify failures"], int):
            bad += t["verify failures"]
    for note in notes:
        print(note)
    canary = totals["canary"]["verify failures"]
    seen = isinstance(canary, int) and canary > 0
    print(
        f"canary (a device that corrupts every write): {canary} verify failures seen"
        + ("" if seen else " -- NONE: the soak cannot see corruption")
    )
    churn = read_count(os.path.join(d, "churn.count"), 2)
    if churn is None:
        print("churn: no count (churn.count): the churn loop did not finish")
        ok = False
    else:
        print(f"churn: {churn[0]} operations, {churn[1]} failed")
    print(f"corruptions: {bad}")
    files = [e for e in os.scandir(d) if e.is_file(follow_symlinks=False)]
    # Blocks in use, as du counts them: the images are sparse until written.
    images = sum(e.stat().st_blocks * 512 for e in files if e.name.endswith(".img"))
    others = sum(e.stat().st_blocks * 512 for e in files if not e.name.endswith(".img"))
    print(f"disk: {others / 1024:.0f} KiB of reports and logs, {images / 2**20:.0f} MiB of images")
    return 0 if ok and not bad and seen and churn and not churn[1] else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: soak-report.py DIR")
    sys.exit(main(sys.argv[1]))
