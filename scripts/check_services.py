"""Check that the integration tests' PostgreSQL and Redis answer.

Thin command-line wrapper over ``integration/_services.py``; run with the project's
venv: ``.venv/bin/python scripts/check_services.py [options] [postgres] [redis]``.

Exit status: 0 all checked services answer; 1 at least one does not (each is named on
stderr with its URL, password hidden); 2 bad usage.

  --create-database   create PostgreSQL's database if the server answers but it is missing
  --explain           on failure, also print how to provide the missing server(s)
  --no-ensure-hint    with --explain: do not suggest scripts/ensure-services
  --timeout S         per-check timeout in seconds (default 3)
  --quiet             print nothing on success
  --local-default S   print nothing; exit 0 if service S's URL is this machine's server on
                      its standard port (127.0.0.1/localhost/::1), else 1
  --containers-usable print nothing; exit 0 if outside CI, testcontainers is importable and
                      a Docker engine answers, else 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from integration import _services as svc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check PostgreSQL and Redis for integration tests")
    parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help="postgres, redis (default both)"
    )
    parser.add_argument("--create-database", action="store_true")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--no-ensure-hint", action="store_true")
    parser.add_argument("--timeout", type=float, default=svc.DEFAULT_TIMEOUT)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--local-default", choices=list(svc.SERVICES), metavar="SERVICE")
    parser.add_argument("--containers-usable", action="store_true")
    args = parser.parse_args(argv)
    unknown = [k for k in args.services if k not in svc.SERVICES]
    if unknown:
        parser.error(f"unknown service(s) {unknown}; choose from {list(svc.SERVICES)}")

    if args.local_default:
        return 0 if svc.SERVICES[args.local_default].is_local_default else 1
    if args.containers_usable:
        usable = not svc.in_ci() and svc.testcontainers_importable() and svc.docker_available()
        return 0 if usable else 1

    services = [svc.SERVICES[k] for k in (args.services or svc.SERVICES)]
    results = svc.check_services_sync(
        services, timeout_s=args.timeout, create_database=args.create_database
    )
    failed = [r for r in results if not r.ok]
    for r in results:
        if r.ok:
            if not args.quiet:
                print(f"reachable: {r.service.name} at {svc.redact(r.url)}")
        else:
            print(
                f"unreachable: {r.service.name} at {svc.redact(r.url)} ({r.error})",
                file=sys.stderr,
            )
    if failed and args.explain:
        message = svc.unreachable_message(failed, hint_ensure_services=not args.no_ensure_hint)
        print(message, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
