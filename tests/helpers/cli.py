"""Running `captioner ...` as a test: in this process, or in a fresh one where only a process can
show the behaviour (signals, the exit of the interpreter, which modules a command imports).

In-process runs go through the same entry point as the console script, `captioner.cli.main`,
with the working directory, environment, stdin, stdout and stderr a fresh process would have
(stderr includes warnings and the libraries' log lines), so they assert the same things ~4 s
sooner each: a fresh process spends that importing torch and Lightning.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

# Tiny but real: the real VGG architecture, the real Lightning Trainer, real pycocotools.
TINY = [
    "data.shapes.num_train=16", "data.shapes.num_val=6", "data.shapes.num_test=6",
    "data.shapes.size=64", "data.batch_size=8", "data.min_count=1",
    "encoder.image_size=32", "encoder.resize_size=32", "decoder.embed_dim=32",
    "decoder.hidden_dim=32", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    "eval.meteor=false", "eval.batch_size=8", "pretrain.epochs=1",
]

CAPTIONER = [sys.executable, "-m", "captioner"]


def run_cli(*args: str, cwd: Path | str, env: dict[str, str] | None = None,
            input: str | bytes | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """`captioner ARGS` in this process, as the console script runs it; the result as
    subprocess.run gives it. `timeout` is accepted for the callers' symmetry with
    `run_cli_process` and not enforced in-process."""
    from captioner.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _process_like(Path(cwd), env, input, err), redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors and --help/--version
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, (int, type(None))):
                print(exit_.code, file=sys.stderr)
    return subprocess.CompletedProcess(["captioner", *args], code, out.getvalue(), err.getvalue())


def run_cli_process(*args: str, cwd: Path | str, env: dict[str, str] | None = None,
                    input: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`captioner ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([*CAPTIONER, *args], cwd=cwd, capture_output=True, text=True, input=input,
                          timeout=timeout, env=os.environ.copy() if env is None else env)


@contextmanager
def _process_like(cwd: Path, env: dict[str, str] | None, stdin: str | bytes | None,
                  stderr: io.StringIO) -> Iterator[None]:
    """The state a fresh process starts from, put back afterwards: directory, environment, stdin,
    Python's default warning filters printing to stderr, and the log handlers writing there."""
    saved_cwd, saved_env, saved_stdin = os.getcwd(), dict(os.environ), sys.stdin
    handlers = _stream_handlers()
    saved_streams = [h.stream for h in handlers]
    os.chdir(cwd)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    data = stdin.encode() if isinstance(stdin, str) else stdin or b""
    sys.stdin = io.TextIOWrapper(io.BytesIO(data))  # text, with the bytes under .buffer, as a pipe
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()  # Python's defaults: these ignored, the rest shown once per place
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings._showwarnmsg_impl = lambda message: stderr.write(warnings.formatwarning(  # type: ignore[attr-defined]
                message.message, message.category, message.filename, message.lineno, message.line))
            for handler in handlers:
                handler.setStream(stderr)
            yield
    finally:
        for handler, stream in zip(handlers, saved_streams):
            handler.setStream(stream)
        sys.stdin = saved_stdin
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


def _stream_handlers() -> list[logging.StreamHandler]:
    names = list(logging.root.manager.loggerDict)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in names)]
    # Plain stream handlers only (Lightning's, writing to stderr); pytest's own capture is a subclass.
    return [h for logger in loggers for h in getattr(logger, "handlers", ())
            if type(h) is logging.StreamHandler]
