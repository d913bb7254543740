"""The ``tangentlab`` command line.

Each subcommand is one *registration function* that adds its parser to the
subparsers and sets ``handler`` (a function ``Namespace -> int``), plus one line
in :data:`COMMANDS`. To add ``tangentlab report RUN_DIR``::

    def _report(sub: Subparsers) -> None:
        p = sub.add_parser("report", help="summarize a finished run")
        p.add_argument("run_dir")
        p.set_defaults(handler=lambda args: report(args.run_dir))

    COMMANDS = (_demo, _report)

Errors raised on purpose by tangentlab (:class:`~tangentlab.errors.TangentlabError`)
are printed as one line on stderr with exit status 2, like argparse's usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import TangentlabError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction

#: Exit status of a TangentlabError and of a usage error.
EXIT_ERROR = 2
#: Exit status after Ctrl-C.
EXIT_INTERRUPTED = 130


def _demo(sub: Subparsers) -> None:
    from . import demo

    p = sub.add_parser(
        "demo", help="train a small MLP on digits and compare Fisher representations and NTKs",
        description="The main-job demo: exact Fisher in five representations with consistency "
                    "checks, FIM/NTK duality, and NTK-label alignment before/after training "
                    "(sklearn digits, CPU, float64).",
    )
    demo.add_arguments(p)
    p.set_defaults(handler=demo.command)


def _run(sub: Subparsers) -> None:
    from .studies.registry import study_names

    names = study_names()
    p = sub.add_parser(
        "run", help="run a study (results, checkpoints and an HTML report in a run directory)",
        description="Run a registered study. The configuration is built from the study's defaults, "
                    "then --preset, then --config FILE (TOML or YAML), then each --set KEY=VALUE, and validated "
                    "before any work starts. Tables are written incrementally; --resume continues a "
                    "killed run from its last checkpoint. On several processes: "
                    "torchrun --nproc-per-node=N -m tangentlab run STUDY ... (studies with independent "
                    "units split them across the ranks; rank 0 writes the report).",
    )
    p.add_argument("study", choices=names, metavar="STUDY", help=f"one of: {', '.join(names)}")
    p.add_argument("--preset", metavar="NAME", help="a named preset of the study (e.g. tiny, paper)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (repeatable); values are TOML (3, 1e-3, true, [1, 2]) "
                        "or plain strings; lists may be comma-separated")
    p.add_argument("--config", metavar="FILE", help="config fields from a TOML file (flat key = value) or a YAML "
                   "file (.yaml/.yml, flat key: value)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: results/STUDY[-PRESET])")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--show-config", action="store_true",
                   help="print the validated configuration (and the fields and presets) and exit")
    p.set_defaults(handler=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    from .studies.framework.config import build_config, describe
    from .studies.framework.runner import run_study
    from .studies.registry import get_study

    if args.show_config:
        cls = get_study(args.study)
        cfg = build_config(cls.config_class, preset=args.preset, toml=args.config, sets=args.sets,
                           study=args.study)
        for key, value in cfg.to_dict().items():
            print(f"{key} = {value!r}  ({cfg.source(key)})")
        print("\nfields:\n" + describe(cls.config_class))
        return 0
    run_study(args.study, preset=args.preset, toml=args.config, sets=args.sets, out=args.out,
              resume=args.resume)
    return 0


def _report(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="render a run directory's HTML report again from its tables",
                       description="Regenerate RUN_DIR/report.html (figures, claims, tables) from the stored "
                                   "tidy tables and print the study's paper-claim-vs-measured summary.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(handler=_report_command)


def _report_command(args: argparse.Namespace) -> int:
    from .studies.framework.runner import report_run

    report_run(args.run_dir)
    return 0


def _claims(sub: Subparsers) -> None:
    p = sub.add_parser("claims", help="the claims' outcomes of one or more runs (counts, Markdown, CSV)",
                       description="Read RUN_DIR/tables/claims.csv of each run and print its counts (findings "
                                   "and identities apart); --markdown writes the STUDIES.md page, --csv all "
                                   "the runs' claims in one tidy table.")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    p.add_argument("--markdown", metavar="FILE", help="write the outcomes as Markdown (STUDIES.md layout)")
    p.add_argument("--title", default="Study outcomes", help="title of the Markdown page")
    p.add_argument("--intro", default="", help="paragraph under the Markdown title")
    p.add_argument("--csv", metavar="FILE", help="write all the runs' claims to one CSV file")
    p.set_defaults(handler=_claims_command)


def _claims_command(args: argparse.Namespace) -> int:
    from .studies.framework.outcomes import outcomes_markdown, read_outcome, write_claims_csv
    from .studies.framework.store import atomic_write_text

    outcomes = [read_outcome(d) for d in args.run_dirs]
    for o in outcomes:
        print(f"{o.study} ({o.preset}, {o.run_dir}): {o.summary}; wall {o.wall_s:.0f} s, CPU {o.cpu_s:.0f} s; "
              f"commit {o.commit}")
    if args.markdown:
        atomic_write_text(args.markdown, outcomes_markdown(outcomes, args.title, args.intro))
    if args.csv:
        write_claims_csv(outcomes, args.csv)
    return 0


#: Registered subcommands, in the order ``--help`` lists them.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (_demo, _run, _report, _claims)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="tangentlab",
        description="Neural networks through their linearization: Fishers, NTKs, Jacobians.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else [str(a) for a in argv])
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return int(handler(args))
    except TangentlabError as e:
        print(f"tangentlab {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tangentlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
