"""`mfp bench report`: the Markdown table and plot of one or more suite results files."""

from __future__ import annotations


def bench_report_parser(bench) -> None:
    b = bench.add_parser(
        "report", help="render the Markdown table and plot of a suite's results file",
        description="Read one or more suite results files (JSON lines) and write <out>.md and <out>.png: per task "
                    "and per difficulty group, success mean +- std over seeds per head and budget, the expert's "
                    "success, inference latency, and the published numbers beside ours, labelled as such.")
    b.add_argument("results", nargs="+", help="results files written by `mfp bench suite`")
    b.add_argument("--out", default=None, help="output path without suffix (default: beside the first results file)")
    b.add_argument("--title", default="Benchmark suite", help="title of the report")
    b.set_defaults(run=_bench_report_run)


def render_report(results, out, title) -> None:
    """Write the report of `results` (one path or several) and say where it went."""
    from mfp.eval.suite.report import write_report

    md, png = write_report(results if isinstance(results, (list, tuple)) else [results], out, title)
    print(f"report: {md} and {png}")


def _bench_report_run(args) -> int:
    from mfp.eval.suite.report import report_paths

    from .output_paths import FILE, Output, check_outputs

    md, png = report_paths(args.results, args.out)
    check_outputs([Output("--out", md, FILE, "Markdown report"), Output("--out", png, FILE, "report plot")])
    render_report(args.results, args.out, args.title)
    return 0
