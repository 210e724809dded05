"""`python -m asr_operator`: run the ASRModelRollout operator (flags per docs/contracts.md)."""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass

DESCRIPTION = """Run the asr-rollout operator: canary rollouts of FunASR model versions.
Credentials: the in-cluster service account, else KUBECONFIG (or ~/.kube/config)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m asr_operator", description=DESCRIPTION)
    parser.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                        help="watch this namespace (repeatable); all namespaces when none is given")
    parser.add_argument("--standalone", action="store_true",
                        help="no kopf peering: a single operator replica (tests, local runs)")
    parser.add_argument("--disable-scanning", action="store_true",
                        help="skip kopf's API discovery scanning (needed against the kmock emulator)")
    parser.add_argument("--metrics-port", type=int, default=8080,
                        help="port of the operator's own /metrics (0: do not serve)")
    parser.add_argument("--webhook-port", type=int, default=8081,
                        help="port of the Alertmanager webhook receiver POST /alerts (0: do not serve)")
    parser.add_argument("--no-config-push", action="store_true",
                        help="do not push model config changes to the pods: they then reach the pods only "
                             "at the kubelet's next sync of the ConfigMap volume (up to about 90 s)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    for port_flag in ("metrics_port", "webhook_port"):
        port = getattr(args, port_flag)
        if not 0 <= port <= 65535:
            parser.error(f"--{port_flag.replace('_', '-')} {port}: use a port 1..65535, or 0 to turn it off")
    return args


@dataclass(frozen=True)
class PeeringOptions:
    name: str
    priority: int


def peering_options(env: Mapping[str, str]) -> PeeringOptions:
    """Peering per docs/contracts.md. The priority is random unless set, because kopf pauses an
    operator that sees a peer of higher *or equal* priority: replicas with one env must differ."""
    name = env.get("ASR_PEERING_NAME") or "asr-rollout"
    text = env.get("ASR_PEERING_PRIORITY")
    if text:
        try:
            priority = int(text)
        except ValueError:
            raise SystemExit(f"ASR_PEERING_PRIORITY={text!r} is not an integer; set a number or unset it") from None
    else:
        priority = random.randint(1, 2**31 - 1)
    return PeeringOptions(name=name, priority=priority)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kopf logs every handler run at INFO; our own log says what matters
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import kopf  # after the flags: `--help` stays fast and works without a cluster

    from . import handlers

    handlers.configure(handlers.OperatorOptions(
        namespaces=list(args.namespace), standalone=args.standalone, disable_scanning=args.disable_scanning,
        metrics_port=args.metrics_port, webhook_port=args.webhook_port, verbose=args.verbose,
        config_push=not args.no_config_push))
    peering = peering_options(os.environ)
    kopf.run(standalone=args.standalone, namespaces=args.namespace, clusterwide=not args.namespace,
             peering_name=None if args.standalone else peering.name,
             priority=None if args.standalone else peering.priority)
    return 0


if __name__ == "__main__":
    sys.exit(main())
