"""``python -m sfpp.world.pretrained <path>``: install the shipped teacher checkpoint at ``path``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sfpp.world.pretrained import install_teacher, provenance


def main(argv: list[str] | None = None) -> None:
    """Command line: copy the shipped teacher (hash checked) to the given path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("target", type=Path, help="where the teacher stage's checkpoint goes")
    args = parser.parse_args(argv)
    record = provenance()
    install_teacher(args.target)
    print(
        f"installed the shipped teacher at {args.target}: trained at commit {record['commit']} on "
        f"{record['machine']} ({record['minutes']:.0f} min); clean frames {record['report']['clean_frame_fraction']:.3f}"
    )


if __name__ == "__main__":
    main()
