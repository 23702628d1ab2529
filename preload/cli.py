"""The ``shardsock`` command.

Today it describes the engine; the instance commands (up, down, status,
stat, run, ...) arrive with the issues that build them.

    $ shardsock counters --json | head -3
    {
      "eth_rx_frames": "frames received",
      "eth_rx_bytes": "bytes received, ethernet header included",
"""
import argparse
import json
import sys

from preload import __version__


def build_parser():
    p = argparse.ArgumentParser(prog="shardsock", description="Unmodified Linux servers on a per-core "
                                "user-space TCP/IP stack.")
    p.add_argument("--version", action="version", version="shardsock " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("counters", help="list every counter an instance keeps, with its meaning")
    c.add_argument("--json", action="store_true", help="print a JSON object name -> description")
    return p


def cmd_counters(args):
    from preload.engine import counter_descriptions
    desc = counter_descriptions()
    if args.json:
        print(json.dumps(desc, indent=2))
    else:
        width = max(map(len, desc))
        for name, text in desc.items():
            print("%-*s  %s" % (width, name, text))
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "counters":
        return cmd_counters(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
