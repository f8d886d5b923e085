"""The README's Results tables, copied from what the report stage wrote (reports/tables.md).

    python -m pipeline.report.readme          # rewrite README.md between its results markers
    python -m pipeline.report.readme --check  # exit 1 if README.md differs from the report

Between `<!-- results:begin -->` and `<!-- results:end -->` the README holds the claims table,
each dataset's main table and the gradient study, as `reports/tables.md` has them (one heading
level down), so the numbers a reader sees first are the ones the pipeline produced.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BEGIN, END = "<!-- results:begin (python -m pipeline.report.readme) -->", "<!-- results:end -->"
#: The sections of tables.md that the README shows, by the start of their title.
SHOWN = ("The papers' claims, checked", "Gradient study")
SHOWN_SUFFIX = (": the losses compared", "(convergence arm)")


def sections(tables: str) -> list[tuple[str, str]]:
    """(title, the section's text) of every `### ` section of tables.md, in order."""
    parts = re.split(r"^### ", tables, flags=re.M)[1:]
    return [(part.split("\n", 1)[0], "#### " + part.rstrip() + "\n") for part in parts]


def results_block(tables: str) -> str:
    shown = [text for title, text in sections(tables)
             if title.startswith(SHOWN) or title.endswith(SHOWN_SUFFIX)]
    return "\n".join(shown)


def updated(readme: str, tables: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md has no {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{results_block(tables)}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report.readme",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--tables", type=Path, default=Path("reports/tables.md"))
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    args = parser.parse_args(argv)
    readme = args.readme.read_text()
    new = updated(readme, args.tables.read_text())
    if args.check:
        if new != readme:
            print(f"{args.readme}: its Results differ from {args.tables}; run "
                  "python -m pipeline.report.readme", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
