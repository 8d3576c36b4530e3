"""``attnflow info FILE``: summarise the runs stored in an HDF5 file."""

from __future__ import annotations

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="summarise a run, study or shard file",
        description="Print the attributes, datasets (shapes, dims, chunks), status and final observables of the "
        "runs in FILE; for a merged study or a sweep shard: its dimensions with their coordinates, variables, "
        "completeness and parameters.",
    )
    p.add_argument("file", help="HDF5 file written by attnflow")
    p.add_argument("--group", default=None, help="only this run group (default: every run in the file)")
    p.add_argument(
        "--repair",
        action="store_true",
        help="clear the HDF5 'open for writing' flag a killed run left, so that any HDF5 tool opens the file "
        "(the run stays marked incomplete)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from studies.store import repair, summarize

    if args.repair:
        changed = repair(args.file)
        print(f"{args.file}: {'cleared the write flag' if changed else 'nothing to repair'}")
    print(summarize(args.file, args.group))
    return 0
