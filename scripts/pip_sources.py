#!/usr/bin/env python3
"""Where pip would look for packages on this machine, as the UV_* variables that tell uv the same.

uv reads no pip configuration, so an environment built with uv would miss what pip finds through pip.conf or PIP_*
variables (here: the local torch 2.13.0+cpu wheel in pip's find-links). This asks pip itself, at run time, how it
would parse `pip install` with no arguments (its own configuration files and variables, in its own order of
precedence), and prints one NAME=VALUE line per setting. Nothing is written anywhere.

    python3 scripts/pip_sources.py          # NAME=VALUE lines, read by scripts/uv
    python3 scripts/pip_sources.py --human  # one line saying what was found (passwords in URLs masked)

Exit status 3 (and why, on stderr) when pip's configuration holds something uv cannot be told: the caller then
installs with pip, which honours it. Run it with the interpreter whose pip would otherwise do the install.
"""

from __future__ import annotations

import re
import sys
from typing import Any


def pip_install_options() -> Any:
    """pip's parsed ``pip install`` options: defaults, then config files, then PIP_* variables, as pip merges them."""
    from pip._internal.commands import create_command  # no public API says what pip's configuration amounts to

    options, _ = create_command("install").parse_args([])
    return options


def uv_variables(options: Any) -> tuple[dict[str, str], list[str]]:
    """(UV_* and SSL_* variables, settings uv cannot be told)."""
    env: dict[str, str] = {}
    unsupported = []
    if options.no_index:
        unsupported.append("no-index")
    control = getattr(options, "format_control", None)
    if control is not None and (control.no_binary or control.only_binary):
        unsupported.append("no-binary/only-binary")
    if options.index_url:
        env["UV_DEFAULT_INDEX"] = options.index_url
    if options.extra_index_urls:
        env["UV_INDEX"] = " ".join(options.extra_index_urls)
        # pip takes the best version from all indexes together; uv's default stops at the first that has the name.
        env["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    if options.find_links:
        env["UV_FIND_LINKS"] = ",".join(options.find_links)
    if options.constraints:
        env["UV_CONSTRAINT"] = " ".join(options.constraints)
    if options.trusted_hosts:
        env["UV_INSECURE_HOST"] = " ".join(options.trusted_hosts)
    if options.pre:
        env["UV_PRERELEASE"] = "allow"
    if options.cert:
        env["SSL_CERT_FILE"] = options.cert
    if getattr(options, "client_cert", None):
        env["SSL_CLIENT_CERT"] = options.client_cert
    if options.proxy:
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = options.proxy
    return env, unsupported


def masked(value: str) -> str:
    """``https://user:secret@host/simple`` -> ``https://user:***@host/simple``: index URLs can carry passwords."""
    return re.sub(r"(//[^/:@\s]*:)[^/@\s]*@", r"\1***@", value)


def main(argv: list[str]) -> int:
    try:
        options = pip_install_options()
    except Exception as exc:  # noqa: BLE001  (any pip, any breakage: the caller falls back to pip itself)
        print(f"pip_sources: cannot read pip's configuration with {sys.executable}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 3
    env, unsupported = uv_variables(options)
    if unsupported:
        print(f"pip_sources: pip is configured with {', '.join(unsupported)}, which uv cannot be told",
              file=sys.stderr)
        return 3
    if argv[1:] == ["--human"]:
        shown = [f"{name}={masked(value)}" for name, value in env.items() if name != "UV_DEFAULT_INDEX"
                 or value != "https://pypi.org/simple"]
        print("; ".join(shown) or "nothing beyond uv's defaults")
    else:
        for name, value in env.items():
            print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
