"""How every `mfp bench` ends: save the figures as JSON (atomically), print the table, say where they went."""

from __future__ import annotations

from mfp.demos.atomic import atomic_write_json


def save_and_print(result: dict, out, table: str | None, verbose: bool = True) -> dict:
    if out:
        atomic_write_json(out, result)
    if verbose:
        if table:
            print(table)
        if out:
            print(f"saved {out}")
    return result
