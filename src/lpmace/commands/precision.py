"""`lpmace precision list` and `lpmace precision show NAME|FILE.yaml`: the precision policies.

`show` validates what it shows: a YAML policy below a floor (e.g. float16 spherical harmonics) is
refused with the floor's reason, exactly as training or evaluation would refuse it.
"""

from __future__ import annotations

import argparse

HELP = "list the precision presets, or show the dtype of every component of one policy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the presets, one line each", description="the presets, one line each")
    show = actions.add_parser("show", help="the dtype of each component of a policy",
                              description="the dtype of each component of a policy (validated)")
    show.add_argument("policy", metavar="NAME|FILE.yaml",
                      help="a preset name, or a YAML file: `base: PRESET` plus component: dtype overrides")


def run(args: argparse.Namespace) -> int:
    from lpmace.errors import InputError
    from lpmace.precision import PRESET_DESCRIPTIONS, PRESETS, resolve_policy

    if args.action == "list":
        width = max(len(name) for name in PRESETS)
        for name in PRESETS:
            print(f"{name:<{width}}  {PRESET_DESCRIPTIONS.get(name, '')}".rstrip())
        return 0
    try:
        policy = resolve_policy(args.policy)
    except InputError as err:
        raise InputError(str(err) if args.policy in str(err) else f"{args.policy}: {err}") from None
    print(policy.table())
    return 0
