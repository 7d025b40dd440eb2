"""`olmo chat` as a user runs it: in a real terminal (a pseudo-terminal, prompt_toolkit reading the keys),
and with stdin piped. A first message is answered with exactly what `olmo generate --chat -p` generates.

The model is a tiny one trained in a second on a few exchanges (tests/api/_helpers.py), so its replies
are short real text ending at EOS."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.api._helpers import EXCHANGES, trained_chat_checkpoint

from ._helpers import clean_env, olmo_executable, run_olmo_here

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]|[\r\x08]")
PROMPT = "\n>"  # prompt_toolkit draws "> " as ">" and a cursor move


@pytest.fixture(scope="module")
def chat_ckpt(tmp_path_factory) -> Path:
    return trained_chat_checkpoint(tmp_path_factory.mktemp("chat-model"))


def _generated(ckpt: Path, *args: str) -> dict:
    out = run_olmo_here("generate", str(ckpt), "--chat", *args, "-n", "20", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["results"][0]


class Terminal:
    """A process on a pseudo-terminal (its stdin, stdout and stderr), read as a person sees it."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
        os.set_blocking(self.master, False)
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
        )
        os.close(slave)
        self.raw = b""

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def read_until(self, text: str, *, after: int = 0, timeout: float = 30) -> int:
        """Reads until `text` appears at or past screen offset `after`; returns where it ends."""
        deadline = time.monotonic() + timeout
        while True:
            at = self.screen.find(text, after)
            if at >= 0:
                return at + len(text)
            if time.monotonic() > deadline or self.proc.poll() is not None and not self._read(0.1):
                raise AssertionError(f"no {text!r} on the terminal; it shows:\n{self.screen[-2000:]}")
            self._read(0.2)

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the process closed the terminal
            return False
        self.raw += chunk
        return bool(chunk)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self, timeout: float = 30) -> int:
        """Waits for the process to end, reading what it still writes (a full terminal would block it)."""
        deadline = time.monotonic() + timeout
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:
                self._read(0.1)
            return self.proc.wait(timeout=1)
        finally:
            os.close(self.master)


def test_chat_in_a_terminal(chat_ckpt, tmp_path):
    history, saved = tmp_path / "history", tmp_path / "out" / "chat.jsonl"
    env = clean_env(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1", COLUMNS="120", LINES="40")
    term = Terminal(
        [olmo_executable(), "chat", str(chat_ckpt), "-n", "20", "--history", str(history)], tmp_path, env
    )
    try:
        at = term.read_until("/help for commands")
        at = term.read_until(PROMPT, after=at)
        first_question, first_answer = EXCHANGES[0]
        term.type(first_question + "\r")
        at = term.read_until(first_answer, after=at)  # streamed back
        at = term.read_until(PROMPT, after=at)
        term.type("/system Be nice.\r")
        at = term.read_until("system message set", after=at)
        term.type("/reset\r")
        at = term.read_until("conversation cleared (the system message stays)", after=at)
        term.type(EXCHANGES[1][0] + "\r")
        at = term.read_until(PROMPT, after=term.read_until(EXCHANGES[1][0], after=at))
        (tmp_path / "a-file").write_text("")
        term.type(f"/save {tmp_path / 'a-file' / 'chat.jsonl'}\r")  # under a file: cannot be written
        at = term.read_until("error: cannot write", after=at)
        term.type(f"/save {saved}\r")
        at = term.read_until(PROMPT, after=term.read_until("saved 3 messages", after=at))
        term.type("\x04")  # Ctrl-D
        assert term.close() == 0, term.screen
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "Traceback" not in term.screen
    # The first reply is what `olmo generate --chat -p` writes for the same message.
    reply = term.screen.split(f"> {first_question}\n", 1)[1].split(PROMPT, 1)[0].strip()
    assert reply == _generated(chat_ckpt, "-p", first_question)["completion"].strip() == first_answer
    record = json.loads(saved.read_text())
    messages = record["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == "Be nice." and messages[1]["content"] == EXCHANGES[1][0]
    with_system = _generated_messages(chat_ckpt, tmp_path, messages[:2])
    assert messages[2]["content"] == with_system["completion"]
    assert first_question in history.read_text() and "/reset" in history.read_text()


def _generated_messages(ckpt: Path, tmp_path: Path, messages: list[dict]) -> dict:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": messages}) + "\n")
    out = run_olmo_here("generate", str(ckpt), "--prompts-file", str(prompts), "-n", "20", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["results"][0]


def test_piped_lines_are_messages_and_commands(chat_ckpt, tmp_path):
    lines = [EXCHANGES[0][0], "/reset", EXCHANGES[2][0], "/save chat.jsonl", "/nonsense", EXCHANGES[3][0]]
    proc = subprocess.run(
        [olmo_executable(), "chat", str(chat_ckpt), "-n", "20"],
        input="\n".join(lines) + "\n",
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first = _generated(chat_ckpt, "-p", EXCHANGES[0][0])["completion"]
    second = _generated(chat_ckpt, "-p", EXCHANGES[2][0])["completion"]
    assert proc.stdout.startswith(f"{first}\n{second}\n")  # replies only, each ending in a newline
    assert "no command /nonsense" in proc.stderr and "Traceback" not in proc.stderr
    saved = json.loads((tmp_path / "chat.jsonl").read_text())["messages"]
    assert saved == [{"role": "user", "content": EXCHANGES[2][0]}, {"role": "assistant", "content": second}]


def test_bad_settings_fail_before_loading(chat_ckpt, tmp_path):
    out = run_olmo_here("chat", str(tmp_path / "missing"))
    assert out.returncode == 4 and "does not exist" in out.stderr
    out = run_olmo_here("chat", str(chat_ckpt), "--top-p", "0")
    assert out.returncode == 2 and "top_p" in out.stderr


def test_a_hugging_face_directory_chats_like_its_source(chat_ckpt, tmp_path):
    out = run_olmo_here("convert-hf", str(chat_ckpt), "--output", str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr
    proc = subprocess.run(
        [olmo_executable(), "chat", str(tmp_path / "hf"), "-n", "20"],
        input=f"{EXCHANGES[3][0]}\n",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == _generated(tmp_path / "hf", "-p", EXCHANGES[3][0])["completion"] + "\n"
    assert proc.stdout == EXCHANGES[3][1] + "\n"
