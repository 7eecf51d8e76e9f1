"""The ``metagpt-vllm-fix`` command: demo, doctor, serve, status, chat-template.

Only argparse and the package itself are imported here; MetaGPT, httpx, aiohttp and rich are imported by the
command that needs them, so ``status`` and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import __version__

TEMPLATE_KINDS = ("none", "llama-2-chat", "mistral-instruct", "gemma")  # server.TEMPLATE_KINDS (no aiohttp import)
ANSWER_STYLES = ("echo", "plain")  # server.echo.ANSWER_STYLES (no aiohttp import)
TEMPLATE_NAMES = ("llama-2", "chatml")  # chat_layout.TEMPLATE_NAMES

if TYPE_CHECKING:
    from .report import Report
    from .server import RecordedRequest

EPILOG = "Exit codes: 0 ok, 1 a problem was found, 2 usage or configuration error. Docs: docs/cli.md"


def _number(convert: Callable[[str], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then insist on ``ok`` (described by ``rule``)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


_positive_float = _number(float, lambda v: v > 0, "> 0")
_port = _number(int, lambda v: 0 <= v <= 65535, "a port, 0-65535")
_positive_int = _number(int, lambda v: v >= 1, ">= 1")


def _vllm_version(text: str) -> str:
    """An argparse type: a vLLM release the behaviour table can place (0.3.0 or later)."""
    from .vllm_versions import for_version

    try:
        for_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip().lstrip("v")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metagpt-vllm-fix",
        description="Make MetaGPT 0.7's open_llm provider work against your vLLM with your config as written: "
                    "the api_key you configured, a max_tokens that fits, token counts from the server.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", help="show the bug and the fix against local vLLM-compatible servers",
        description="Start two vLLM-compatible servers with a random --api-key on 127.0.0.1, one as vLLM 0.3.3 "
                    "(MetaGPT 0.7's time), one as vLLM 0.32 serving the seed's model without a chat template, and ask "
                    "each three times through MetaGPT 0.7's open_llm provider with the seed's config: as shipped "
                    "(401, 'Bearer sk-xxx'), with the api_key fix alone (400) and with every fix (an answer).",
        epilog="Exit codes: 0 each server went 401, 400, answer as described, 1 anything else.")
    demo.add_argument("--api-key", metavar="KEY",
                      help="use KEY as the server's key instead of a random one (it is never printed in full)")

    doctor = commands.add_parser(
        "doctor", help="check MetaGPT's config, the plugin and the server",
        description="Read the configuration the way MetaGPT 0.7 does (METAGPT_ROOT/config/config2.yaml, then "
                    "~/.metagpt/config2.yaml), probe the server with the configured key, then ask it the way "
                    "MetaGPT asks (its open_llm provider: a chat request, streamed, up to the first token; the Data "
                    "Interpreter's function call; one ActionNode fill, whose answer MetaGPT must parse). "
                    "Each line is one named check; --list-checks lists them, `doctor NAME...` runs only those.",
        epilog="Exit codes: 0 ok (warnings allowed), 1 a problem was found, 2 usage or configuration error.")
    doctor.add_argument("checks", nargs="*", metavar="CHECK", help="run only these checks (default: all)")
    doctor.add_argument("--list-checks", action="store_true",
                        help="list every check in the order they run, with what it looks at, and exit")
    doctor.add_argument("--config", metavar="PATH", help="check exactly this config2.yaml")
    doctor.add_argument("--timeout", metavar="S", type=_positive_float, default=5.0,
                        help="bound for all network checks together, MetaGPT's requests included (default: 5; an "
                             "ActionNode fill on a CPU server may need minutes: doctor formats --timeout 600)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object (fields in docs/cli.md)")

    serve = commands.add_parser(
        "serve", help="run a vLLM-compatible test server (no GPU, echo answers)",
        description="A GPU-free stand-in for vLLM's OpenAI-compatible server, playing the vLLM release you name: "
                    "its key check, its 401/404/400 answers and their bodies, /version, its max_tokens rule, its "
                    "streamed usage, its function calls and structured outputs; deterministic echo text (a value "
                    "valid against the schema where one constrains the answer).",
        epilog="The key may also come from VLLM_API_KEY (which wins over --api-key up to vLLM 0.10, as there). "
               "Ctrl-C or SIGTERM stops the server (exit 0).")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1 paths")
    serve.add_argument("--model", default=None, metavar="NAME", help="served model name "
                       "(default: meta-llama/Llama-2-7b-hf)")
    serve.add_argument("--max-model-len", type=_positive_int, default=4096, metavar="N",
                       help="context length the server enforces (default: 4096)")
    serve.add_argument("--vllm-version", type=_vllm_version, default=None, metavar="VERSION",
                       help="the vLLM release to answer as, e.g. 0.3.3 (MetaGPT 0.7's time) or 0.32.0 (default: "
                            "0.32.0)")
    serve.add_argument("--reject-unknown-fields", action="store_true",
                       help="refuse request fields OpenAI's API does not define (stream_options ...), as some "
                            "OpenAI-compatible servers do; vLLM ignores them")
    serve.add_argument("--chat-template", choices=TEMPLATE_KINDS, default="none", metavar="KIND",
                       help="the served model's chat template: none (the seed's Llama-2-7b-hf as published: vLLM "
                            "0.5.5+ refuses chat requests), llama-2-chat, mistral-instruct or gemma (both refuse "
                            "MetaGPT's system message) (default: none)")
    serve.add_argument("--enable-auto-tool-choice", action="store_true",
                       help="with --tool-call-parser: answer tools without a tool_choice with a tool call (vLLM's "
                            "flag; the emulator's model always calls, the first tool offered). Without it, such a "
                            "request gets vLLM's 400")
    serve.add_argument("--answers", choices=ANSWER_STYLES, default="echo", metavar="STYLE",
                       help="how the model answers: echo (the prompt again) or plain (plain words, never the format "
                            "MetaGPT asks for: a small or base model; answers constrained by a schema or pattern "
                            "keep to it) (default: echo)")
    serve.add_argument("--tool-call-parser", metavar="NAME", default=None,
                       help="answer a named tool_choice with a tool call whose arguments fit the function's "
                            "parameters (vLLM's flag; any NAME, e.g. hermes: the emulator parses nothing). Without "
                            "it, vLLM 0.14+ refuses a named tool_choice with 400 (vLLM 0.6.0+)")

    template = commands.add_parser(
        "chat-template", help="print the path of a chat template file this package ships",
        description="Print the absolute path of a shipped chat template, for vLLM's --chat-template: the "
                    "server-side remedy for a model without one, e.g. "
                    "vllm serve ... --chat-template \"$(metagpt-vllm-fix chat-template llama-2)\". llama-2 is the "
                    "[INST]/<<SYS>> layout transformers <= 4.43 used for Llama-family tokenizers, chatml the one "
                    "it used for the others.",
        epilog="Exit codes: 0 printed, 2 unknown name.")
    template.add_argument("name", choices=TEMPLATE_NAMES, metavar="NAME", help="llama-2 or chatml")

    status = commands.add_parser("status", help="one line: is the fix active here, and why",
                                 description="Print whether the plugin is active, and why, in one line.")
    status.add_argument("--json", action="store_true", help="print the status fields as one JSON object")
    return parser


def cmd_status(as_json: bool) -> int:
    """One honest line: the plugin's state in this process (the CLI imports it) and automatic activation."""
    from ._activation import status

    st = status()
    raw = os.environ.get("METAGPT_VLLM_FIX")
    switch = f"METAGPT_VLLM_FIX={raw}" if raw is not None else "METAGPT_VLLM_FIX unset"
    if st.automatic:
        automatic = f"on ({st.pth_file}, {switch})"
    elif st.code not in ("supported", "removed"):
        automatic = "nothing to patch"
    elif st.pth_file is None:
        automatic = "not installed (no metagpt-vllm-fix.pth): only programs that `import metagpt_vllm_fix` are patched"
    else:
        automatic = f"off ({switch}): only programs that `import metagpt_vllm_fix` are patched"
    line = f"{st} Automatic activation: {automatic}."
    if as_json:
        import dataclasses
        import json

        print(json.dumps({**dataclasses.asdict(st), "automatic": st.automatic, "line": line}))
    else:
        print(line)
        for fix in st.fixes:
            print(f"  {fix.name:<13} {fix.state:<9} {fix.reason}")
    return 0


class _RequestLog(list["RecordedRequest"]):
    """The server's recorder: prints one line per request as it is answered (keys masked)."""

    def __init__(self, report: Report, show: Callable[[Optional[str]], str]) -> None:
        super().__init__()
        self.report, self.show = report, show

    def append(self, item: RecordedRequest) -> None:
        header = ("no Authorization header" if item.authorization is None
                  else f"Authorization: {self.show(item.authorization)}")
        self.report.line(f"  {item.method} {item.path}  {header}  -> {item.status}")


def _client_url(url: str) -> str:
    """The URL a local client should use (a wildcard bind address is not one)."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:", 1).replace("//[::]:", "//[::1]:", 1)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the embedded vLLM-compatible server until Ctrl-C / SIGTERM."""
    from . import server as srv
    from .doctor.probe import is_loopback
    from .masking import mask, show_authorization
    from .report import PROBLEM, WARNING, Report
    from .vllm_versions import for_version

    report = Report()
    version = args.vllm_version or srv.DEFAULT_VERSION
    generation = for_version(version)
    env_key = os.environ.get("VLLM_API_KEY") or None
    key = srv.api_key_from_env(args.api_key, version)
    report.secret(key, args.api_key, env_key)
    model = args.model or srv.DEFAULT_MODEL
    if key is None:
        key_line = "none: every request is accepted (like vLLM started without --api-key)"
    elif env_key and args.api_key and env_key != args.api_key:
        winner = "VLLM_API_KEY, which wins over --api-key" if generation.env_key_wins else \
            "--api-key, which wins over VLLM_API_KEY"
        key_line = f"{mask(key)} from {winner} in vLLM {version}"
    else:
        key_line = f"{mask(key)} (from {'VLLM_API_KEY' if env_key else '--api-key'})"

    def ready(url: str) -> None:
        base_url = _client_url(url) + "/v1"
        loopback = is_loopback(args.host)
        report.title(f"metagpt-vllm-fix serve: answers as vLLM {version} does, for trying a config without a GPU")
        report.field("URL", base_url + ("   (loopback only: reachable from this machine)" if loopback else ""))
        report.field("API key", key_line)
        report.field("model", f"{model} (max_model_len {args.max_model_len}; "
                              + ("answers echo the prompt)" if args.answers == "echo" else
                                 "answers in plain words, never in MetaGPT's formats unless constrained)"))
        report.field("rules", f"vLLM {generation.name} generation: {generation.context_rule}"
                     + ("; refuses unknown request fields" if args.reject_unknown_fields else ""))
        report.field("template", _template_line(args.chat_template, generation.no_template_message is None))
        report.field("tools", _tools_line(args.tool_call_parser, args.enable_auto_tool_choice))
        if not loopback:
            report.check(WARNING, f"listening on {args.host}, not loopback: anyone who can reach this machine can "
                                  "use this server, and keys travel in clear text over plain http.")
        report.line("config2.yaml for MetaGPT 0.7 (~/.metagpt/config2.yaml)"
                    + (", with your key in place of the masked one:" if key else ":"))
        report.line("  llm:")
        report.line("    api_type: open_llm")
        report.line(f"    base_url: '{base_url}'")
        report.line(f"    model: '{model}'")
        report.line(f"    api_key: '{mask(key)}'" if key else
                    "    api_key: 'any-non-empty-text'   # MetaGPT requires one; this server checks none")
        report.line("  (llm.max_token may stay at MetaGPT's default 4096: the plugin's max_tokens fix leaves out a "
                    "max_tokens that does not fit max_model_len)")
        if args.chat_template == "none" and generation.no_template_message is not None:
            report.line("  (this model has no chat template: the plugin's chat_template fix answers MetaGPT through "
                        "/v1/completions)")
        elif args.chat_template in ("mistral-instruct", "gemma"):
            report.line("  (this template refuses the system role: the plugin's system_role fix puts MetaGPT's system "
                        "message into the first user message)")
        if not args.enable_auto_tool_choice:
            report.line("  (no --enable-auto-tool-choice: the plugin's tools fix answers MetaGPT's function calls, "
                        "aask_code, with JSON constrained by the function's schema)")
        report.line("Requests are listed below as they come (keys masked). Ctrl-C stops the server.")

    log = _RequestLog(report, show_authorization)
    try:
        srv.run(host=args.host, port=args.port, api_keys=[key] if key else [], model=model,
                max_model_len=args.max_model_len, vllm_version=version,
                reject_unknown_fields=args.reject_unknown_fields, chat_template=args.chat_template,
                tool_parser=args.tool_call_parser, enable_auto_tool_choice=args.enable_auto_tool_choice,
                answers=args.answers, ready=ready, recorder=log)
    except OSError as exc:
        report.check(PROBLEM, f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 1
    report.line("stopped.")
    return 0


def _template_line(kind: str, answers_without: bool) -> str:
    if kind == "none":
        return ("none (chat requests are answered in transformers' old default layout, as vLLM 0.3.3 did)"
                if answers_without else "none (every chat request gets 400, as from vLLM 0.5.5 on)")
    if kind == "llama-2-chat":
        return "llama-2-chat (one system message, then user/assistant alternating)"
    return f"{kind} (refuses a system message with 400)"


def _check_tool_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """vLLM's own start-up checks of its tool flags (a usage error, exit 2)."""
    from .vllm_versions import DEFAULT_VERSION, for_version

    version = args.vllm_version or DEFAULT_VERSION
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        parser.error("serve: --enable-auto-tool-choice requires --tool-call-parser")
    if args.tool_call_parser and for_version(version).ignores_tools:
        parser.error(f"serve: vLLM {version} has no tool calling (--tool-call-parser came with vLLM 0.6.0)")


def _tools_line(parser: Optional[str], auto: bool) -> str:
    if parser is None:
        return "no tool flags (function calls are refused or ignored, as the release did)"
    choice = "tools with or without a tool_choice" if auto else "a named tool_choice"
    return f"--tool-call-parser {parser}{' --enable-auto-tool-choice' if auto else ''}: {choice} answered with a call"


def cmd_chat_template(name: str) -> int:
    from .chat_layout import template_path

    print(template_path(name))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``metagpt-vllm-fix`` console script and of ``python -m metagpt_vllm_fix``."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == "doctor" and args.checks:
        from .doctor import unknown

        if unknown(args.checks):
            parser.error(f"doctor: no check named {', '.join(map(repr, unknown(args.checks)))} "
                         "(`metagpt-vllm-fix doctor --list-checks` lists them)")
    if args.command == "serve":
        _check_tool_flags(parser, args)
    try:
        if args.command == "status":
            return cmd_status(args.json)
        if args.command == "demo":
            from . import demo

            return demo.run(api_key=args.api_key)
        if args.command == "doctor":
            from . import doctor

            if args.list_checks:
                return doctor.list_checks()
            return doctor.run(config=args.config, timeout=args.timeout, as_json=args.json, checks=args.checks)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "chat-template":
            return cmd_chat_template(args.name)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `metagpt-vllm-fix doctor | head`: stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
