"""A protobuf text-format parser for Caffe prototxt files, driven by :mod:`savedeep.caffe.schema`.

Accepts what Caffe's own parser accepts for the messages in the schema:
``# comments``, ``field: value``, ``field { ... }``, ``field: { ... }``,
``field < ... >``, ``field: [v1, v2]`` for repeated scalars, single- or
double-quoted strings with C escapes (adjacent strings are joined), enum
values by name or number, numbers such as ``1e-4``, ``.5``, ``1.``, ``inf``,
and ``true``/``false``. A syntax error raises :class:`ModelError` naming the
file, line and column and what was expected there.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from savedeep.caffe.schema import ENUMS, LENIENT_MESSAGES, MESSAGES, TEXT_ALIASES, Field, Message
from savedeep.errors import ModelError

log = logging.getLogger(__name__)

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)(?![\w.]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<symbol>[{}<>:\[\],;])
    """,
    re.VERBOSE,
)

_INT_TYPES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}


class _Token:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind: str, text: str, line: int, col: int) -> None:
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def describe(self) -> str:
        return "end of file" if self.kind == "eof" else repr(self.text)


def _tokenize(text: str, source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos, line, line_start = 0, 1, 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            col = pos - line_start + 1
            raise ModelError(
                f"{source}:{line}:{col}: unexpected character {text[pos]!r}; "
                "fix the prototxt syntax (protobuf text format)"
            )
        kind = m.lastgroup
        assert kind is not None  # every alternative of the token pattern is a named group
        if kind == "nl":
            line += 1
            line_start = m.end()
        elif kind not in ("ws", "comment"):
            tokens.append(_Token(kind, m.group(), line, pos - line_start + 1))
        pos = m.end()
    tokens.append(_Token("eof", "", line, pos - line_start + 1))
    return tokens


def _unescape(quoted: str) -> bytes:
    body = quoted[1:-1]
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt].encode()
            i += 2
        elif nxt in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2 :])
            if not m:
                raise ValueError("\\x needs hex digits")
            out.append(int(m.group(), 16))
            i += 2 + len(m.group())
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1 :])
            assert m is not None  # nxt, its first character, is an octal digit
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        else:
            raise ValueError(f"unknown escape \\{nxt}")
    return bytes(out)


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(text, source)
        self.i = 0

    # -- token helpers -------------------------------------------------
    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, tok: _Token, expected: str) -> ModelError:
        return ModelError(
            f"{self.source}:{tok.line}:{tok.col}: expected {expected}, found {tok.describe()}; "
            "fix the prototxt (protobuf text format of caffe.proto)"
        )

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok.kind == "symbol" and tok.text == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str | None = None) -> None:
        if not self.accept(text):
            raise self.error(self.peek(), what or repr(text))

    # -- grammar -------------------------------------------------------
    def parse_message(self, msg: Message, closer: str | None) -> None:
        fields = MESSAGES[msg.type_name]
        while True:
            tok = self.peek()
            if closer is None and tok.kind == "eof":
                return
            if closer is not None and tok.kind == "symbol" and tok.text == closer:
                self.i += 1
                return
            if tok.kind != "ident":
                where = f"a field name of {msg.type_name}" + (f" or {closer!r}" if closer else "")
                raise self.error(tok, where)
            self.i += 1
            name = tok.text
            field = fields.get(name)
            alias = TEXT_ALIASES.get((msg.type_name, name))
            if field is None and alias is not None:
                self.parse_alias(msg, name, alias, tok)
            elif field is None:
                self.unknown_field(msg, name, tok)
            elif field.type == "message":
                self.parse_submessage(msg, field)
            else:
                self.expect(":", f"':' after {name!r}")
                if field.repeated and self.accept("["):
                    values = msg._values.setdefault(name, [])
                    if not self.accept("]"):
                        while True:
                            values.append(self.parse_scalar(field))
                            if self.accept("]"):
                                break
                            self.expect(",", "',' or ']'")
                else:
                    value = self.parse_scalar(field)
                    if field.repeated:
                        msg._values.setdefault(name, []).append(value)
                    else:
                        setattr(msg, name, value)
            # separators between fields are optional
            if not self.accept(","):
                self.accept(";")

    def parse_submessage(self, msg: Message, field: Field) -> None:
        self.accept(":")
        tok = self.peek()
        if self.accept("{"):
            closer = "}"
        elif self.accept("<"):
            closer = ">"
        else:
            raise self.error(tok, f"'{{' to open {field.name} ({field.type_name})")
        child = msg.add(field.name) if field.repeated else msg.mutable(field.name)
        self.parse_message(child, closer)

    def parse_alias(self, msg: Message, name: str, alias: tuple[str, dict[Any, Any]], tok: _Token) -> None:
        target, mapping = alias
        self.expect(":", f"':' after {name!r}")
        value = self.parse_scalar(Field(0, name, "bool"))
        setattr(msg, target, mapping[value])
        log.debug("%s:%d:%d: %s.%s read as %s", self.source, tok.line, tok.col, msg.type_name, name, target)

    def unknown_field(self, msg: Message, name: str, tok: _Token) -> None:
        if msg.type_name not in LENIENT_MESSAGES:
            valid = ", ".join(sorted(MESSAGES[msg.type_name]))
            raise ModelError(
                f"{self.source}:{tok.line}:{tok.col}: unknown field {name!r} in {msg.type_name}; "
                f"valid fields are: {valid}"
            )
        log.warning(
            "%s:%d:%d: skipping field %r of %s, which savedeep does not model",
            self.source,
            tok.line,
            tok.col,
            name,
            msg.type_name,
        )
        self.skip_value()

    def skip_value(self) -> None:
        """Consume one value of any shape: a scalar, a list, or a nested block."""
        had_colon = self.accept(":")
        tok = self.peek()
        if tok.kind == "symbol" and tok.text in "{<":
            self.i += 1
            depth = 1
            while depth:
                tok = self.next()
                if tok.kind == "eof":
                    raise self.error(tok, "the end of the skipped block")
                if tok.kind == "symbol" and tok.text in "{<":
                    depth += 1
                elif tok.kind == "symbol" and tok.text in "}>":
                    depth -= 1
            return
        if not had_colon:
            raise self.error(tok, "':' or '{'")
        if self.accept("["):
            while not self.accept("]"):
                if self.next().kind == "eof":
                    raise self.error(tok, "']'")
            return
        tok = self.next()
        if tok.kind not in ("number", "ident", "string"):
            raise self.error(tok, "a value")
        while tok.kind == "string" and self.peek().kind == "string":
            self.next()

    def parse_scalar(self, field: Field) -> Any:
        tok = self.next()
        t = field.type
        if t in ("string", "bytes"):
            if tok.kind != "string":
                raise self.error(tok, f"a quoted string for {field.name!r}")
            parts = [tok]
            while self.peek().kind == "string":
                parts.append(self.next())
            try:
                raw = b"".join(_unescape(p.text) for p in parts)
            except ValueError as exc:
                raise self.error(tok, f"a valid string ({exc})") from None
            if t == "bytes":
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self.error(tok, f"UTF-8 text for {field.name!r}") from None
        if t == "bool":
            if tok.text in ("true", "True", "t", "1"):
                return True
            if tok.text in ("false", "False", "f", "0"):
                return False
            raise self.error(tok, f"true or false for {field.name!r}")
        if t == "enum":
            values = ENUMS[field.named_type]
            if tok.kind == "ident" and tok.text in values:
                return tok.text
            if tok.kind == "number":
                try:
                    number = int(tok.text, 0)
                except ValueError:
                    number = None
                for enum_value, enum_number in values.items():
                    if enum_number == number:
                        return enum_value
            raise self.error(tok, f"one of {', '.join(values)} for {field.name!r}")
        if t in ("float", "double"):
            if tok.kind == "number":
                text = tok.text.rstrip("fF") if not tok.text.lower().startswith(("0x", "-0x", "+0x")) else tok.text
                try:
                    return float(int(text, 16)) if "x" in text.lower() else float(text)
                except ValueError:
                    raise self.error(tok, f"a number for {field.name!r}") from None
            low = tok.text.lower()
            if tok.kind == "ident" and low in ("inf", "-inf", "infinity", "-infinity", "nan"):
                return float(low.replace("infinity", "inf"))
            raise self.error(tok, f"a number for {field.name!r}")
        if t in _INT_TYPES:
            if tok.kind != "number":
                raise self.error(tok, f"an integer for {field.name!r}")
            try:
                value = int(tok.text, 0) if tok.text.lower().lstrip("+-").startswith("0x") else int(tok.text)
            except ValueError:
                raise self.error(tok, f"an integer for {field.name!r} ({t})") from None
            lo, hi = _INT_TYPES[t]
            if not lo <= value <= hi:
                raise self.error(tok, f"an integer in [{lo}, {hi}] for {field.name!r} ({t})")
            return value
        raise AssertionError(f"unhandled scalar type {t}")  # pragma: no cover - schema bug


def parse_text(text: str, message_type: str = "NetParameter", source: str = "<string>") -> Message:
    """Parse protobuf text format into a Message of ``message_type``; ``source`` names it in errors."""
    parser = _Parser(text, source)
    msg = Message(message_type)
    parser.parse_message(msg, None)
    return msg


def parse_prototxt(path: Path, message_type: str = "NetParameter") -> Message:
    """Read and parse a prototxt file; a missing or unreadable file raises ModelError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(
            f"{path}: prototxt not found; give the path of the network definition (e.g. deploy.prototxt)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the prototxt ({exc}); it must be a UTF-8 text file") from None
    return parse_text(text, message_type, str(path))


def format_text(msg: Message, indent: int = 0) -> str:
    """Write a Message back as protobuf text format (used for tests and debugging)."""
    pad = "  " * indent
    lines: list[str] = []
    for field, value in msg.items():
        values = value if field.repeated else [value]
        for v in values:
            if field.type == "message":
                lines.append(f"{pad}{field.name} {{")
                body = format_text(v, indent + 1)
                if body:
                    lines.append(body)
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{field.name}: {_format_scalar(field, v)}")
    return "\n".join(lines)


def _format_scalar(field: Field, value: Any) -> str:
    if field.type == "string":
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if field.type == "bytes":
        return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03o}" for b in value) + '"'
    if field.type == "bool":
        return "true" if value else "false"
    if field.type in ("float", "double"):
        v = float(value)
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return repr(v)
    return str(value)
