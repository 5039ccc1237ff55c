"""`captioner completion SHELL`: the shell code that completes captioner's commands and options.

Built on argcomplete: it serves bash, zsh and fish from the same parser the commands use (shtab
writes static scripts for bash and zsh only), so the completions never drift from the options.
"""

from __future__ import annotations

import argparse

from captioner.cli.common import command


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "completion", "print the shell code that completes captioner's commands, options "
                                   "and file names (source it from your shell's start-up file)", [
        "captioner completion bash >> ~/.bashrc",
        "captioner completion zsh >> ~/.zshrc",
        "captioner completion fish > ~/.config/fish/completions/captioner.fish",
    ])
    p.add_argument("shell", choices=("bash", "zsh", "fish"), help="your shell")


def run(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["captioner"], shell=args.shell))
    return 0
