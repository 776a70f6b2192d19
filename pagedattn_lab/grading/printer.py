"""How a check's report is printed (report.run_cases): lines wrapped between words at WIDTH,
each distinct hint once."""
from __future__ import annotations

import textwrap

WIDTH = 79  # printed lines are wrapped here, between words (a notebook breaks long lines anywhere)


class Printer:
    """Collects and prints the report: lines wrapped between words, each distinct hint once."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.lines: list[str] = []
        self.notes: list[str] = []
        self.hints: dict[str, str] = {}  # hint -> the case that printed it first

    def say(self, text: str = "", indent: str = "", hang: str = "") -> None:
        """Print `text` after `indent`, wrapped; continuation lines get `indent` + `hang`.
        A line of `text` that starts with whitespace (quoted code) is printed as it is."""
        for paragraph in text.split("\n") or [""]:
            if paragraph[:1].isspace():  # quoted source or compiler output: keep it whole
                wrapped = [indent + paragraph]
            else:
                wrapped = textwrap.wrap(paragraph, WIDTH, initial_indent=indent,
                                        subsequent_indent=indent + hang,
                                        break_long_words=False,
                                        break_on_hyphens=False) or [indent.rstrip()]
            for line in wrapped:
                self.lines.append(line)
                if not self.quiet:
                    print(line)

    def failure(self, label: str, message: str, hint: str, expected: str = "",
                got: str = "") -> None:
        self.say(f"FAIL  {label}", "  ", "      ")
        self.say(message, " " * 8)
        if expected or got:
            self.say(f"expected: {expected}", " " * 8, " " * 10)
            self.say(f"got:      {got}", " " * 8, " " * 10)
        if not hint:
            return
        if hint in self.hints:
            self.say(f"hint: as for {self.hints[hint]} above", " " * 8)
        else:
            self.hints[hint] = " ".join(label.split()[:2])  # "case 3"
            self.say(f"hint: {hint}", " " * 8, " " * 6)
