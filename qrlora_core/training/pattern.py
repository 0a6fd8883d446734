"""Layer-name patterns that cannot freeze the server: the regular expressions people write, matched in linear time.

Python's `re` backtracks, and one C call holds the interpreter for as long
as it runs: a pattern like `(\\w+)+!` against a layer name takes hours,
and while it runs no HTTP request (not even /interrupt) is answered. Here
a pattern is compiled to a Thompson NFA and searched by following every
state at once, so a name of length n costs at most n steps over a set of
states bounded by MAX_STATES, whatever the pattern.

The language is the part of `re` that layer names need, with `re.search`'s
meaning: literals, `.`, classes (`[._]`, `[^0-9]`, `[a-z]`), `\\d \\w \\s`
(and their capitals), escaped punctuation (`\\.`), groups `( )`, `(?: )`,
`(?P<name> )`, alternation `|`, the quantifiers `? * + {m} {m,} {m,n}`
(their lazy forms match the same names), and the anchors `^` and `$`.
Back-references, look-arounds and flags need backtracking or change the
meaning of the rest: they are refused in one sentence.
"""

import string

from ..errors import AdapterError

MAX_LENGTH = 1000  # characters of a pattern
MAX_STATES = 1000  # NFA states after counted repeats are written out
_CACHE_LIMIT = 20000  # remembered (states, character) steps per pattern

_DIGITS = frozenset(string.digits)
_WORD = frozenset(string.ascii_letters + string.digits + "_")
_SPACE = frozenset(" \t\n\r\f\v")
_CLASSES = {"d": (_DIGITS, False), "D": (_DIGITS, True), "w": (_WORD, False), "W": (_WORD, True), "s": (_SPACE, False), "S": (_SPACE, True)}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_LANGUAGE = "use literals, '.', [classes], \\d \\w \\s, groups with '|', ? * + {m,n}, ^ and $"


class _Refused(Exception):
    pass


class _Chars:
    """A set of characters, or all but a set (`negated`); '.' is all but a newline."""

    __slots__ = ("chars", "negated")

    def __init__(self, chars, negated=False):
        self.chars, self.negated = frozenset(chars), negated

    def __contains__(self, ch) -> bool:
        return (ch in self.chars) != self.negated


# NFA states: (kind, argument, next, alternative); kinds below
_CHAR, _SPLIT, _BEGIN, _END, _MATCH = range(5)


class _Parser:
    """Recursive descent over the pattern, emitting NFA fragments (start, list of dangling exits)."""

    def __init__(self, text: str):
        self.text, self.at, self.states = text, 0, []

    def state(self, kind, arg=None) -> int:
        if len(self.states) >= MAX_STATES:
            raise _Refused(f"it makes more than {MAX_STATES} matching states (a long pattern or large {{m,n}} counts)")
        self.states.append([kind, arg, None, None])
        return len(self.states) - 1

    def patch(self, exits, target) -> None:
        for index, slot in exits:
            self.states[index][slot] = target

    def peek(self):
        return self.text[self.at] if self.at < len(self.text) else None

    def take(self):
        ch = self.peek()
        self.at += 1
        return ch

    # alternation := sequence ('|' sequence)*
    def alternation(self):
        first = self.sequence()
        while self.peek() == "|":
            self.take()
            second = self.sequence()
            split = self.state(_SPLIT)
            self.states[split][2], self.states[split][3] = first[0], second[0]
            first = (split, first[1] + second[1])
        return first

    def sequence(self):
        pieces = []
        while self.peek() not in (None, "|", ")"):
            pieces.append(self.repeat())
        if not pieces:
            return self.empty()
        start, exits = pieces[0]
        for piece in pieces[1:]:
            self.patch(exits, piece[0])
            exits = piece[1]
        return start, exits

    def empty(self):
        split = self.state(_SPLIT)  # an epsilon step: both ways lead on
        return split, [(split, 2), (split, 3)]

    def repeat(self):
        begin = self.at
        fragment = self.atom()
        atom_text = (begin, self.at)
        while self.peek() in ("?", "*", "+", "{"):
            low, high = self.counts()
            if low is None:  # '{' that starts no count is a literal, as in re
                break
            if self.peek() == "?":  # lazy: the same set of names matches
                self.take()
            elif self.peek() == "+":
                raise _Refused("possessive quantifiers ('*+', '++') need backtracking")
            fragment = self.counted(fragment, atom_text, low, high)
            atom_text = (begin, self.at)
        return fragment

    def counts(self):
        ch = self.peek()
        if ch in "?*+":
            self.take()
            return {"?": (0, 1), "*": (0, None), "+": (1, None)}[ch]
        end = self.text.find("}", self.at)
        body = self.text[self.at + 1:end] if end > 0 else ""
        low, comma, high = body.partition(",")
        digits = lambda s: s.isascii() and s.isdigit()  # 0-9 only, as re: '²'.isdigit() too, yet int() refuses it (and reads '٣' as 3)
        if not (digits(low) or (comma and not low)) or (high and not digits(high)):
            return None, None
        self.at = end + 1
        low_n = int(low) if low else 0
        high_n = int(high) if high else (None if comma else low_n)
        if high_n is not None and high_n < low_n:
            raise _Refused(f"the count {{{body}}} has its maximum below its minimum")
        return low_n, high_n

    def counted(self, fragment, atom_text, low, high):
        """The atom `low` times, then `high - low` optional copies, or one more looping copy when unbounded (each copy parsed again)."""
        total = low + (1 if high is None else high - low)
        if total == 0:
            return self.empty()
        copies = [fragment] + [self.reparse(atom_text) for _ in range(total - 1)]
        start, exits = None, []
        for i, (entry, out) in enumerate(copies):
            if i >= low:  # optional, or (unbounded) looping
                split = self.state(_SPLIT)
                self.states[split][2] = entry
                if high is None:
                    self.patch(out, split)
                    out = []
                entry, out = split, out + [(split, 3)]
            if start is None:
                start = entry
            else:
                self.patch(exits, entry)
            exits = out
        return start, exits

    def reparse(self, span):
        saved = self.at
        self.at = span[0]
        fragment = self.atom()
        self.at = saved
        return fragment

    def atom(self):
        ch = self.take()
        if ch == "(":
            return self.group()
        if ch == "[":
            return self.char(self.char_class())
        if ch == ".":
            return self.char(_Chars("\n", negated=True))
        if ch == "^":
            begin = self.state(_BEGIN)
            return begin, [(begin, 2)]
        if ch == "$":
            end = self.state(_END)
            return end, [(end, 2)]
        if ch == "\\":
            return self.char(self.escape())
        if ch in "*+?":
            raise _Refused(f"'{ch}' at position {self.at} repeats nothing")
        if ch == ")":
            raise _Refused(f"')' at position {self.at} closes no group")
        return self.char(_Chars(ch))

    def char(self, chars: _Chars):
        s = self.state(_CHAR, chars)
        return s, [(s, 2)]

    def group(self):
        if self.peek() == "?":
            self.take()
            kind = self.take()
            if kind == "P" and self.peek() == "<":
                end = self.text.find(">", self.at)
                if end < 0:
                    raise _Refused("a group name (?P<name> is not closed with '>'")
                self.at = end + 1
            elif kind != ":":
                what = {"=": "look-ahead", "!": "look-ahead", "<": "look-behind", "P": "named back-reference", "(": "conditional group", ">": "atomic group", "#": "comment"}
                raise _Refused(f"'(?{kind}' ({what.get(kind, 'a flag or extension')}) is not a part of this pattern language")
        fragment = self.alternation()
        if self.take() != ")":
            raise _Refused("a '(' is not closed with ')'")
        return fragment

    def escape(self) -> _Chars:
        ch = self.take()
        if ch is None:
            raise _Refused("it ends with a lone backslash")
        if ch in _CLASSES:
            chars, negated = _CLASSES[ch]
            return _Chars(chars, negated)
        if ch in _ESCAPES:
            return _Chars(_ESCAPES[ch])
        if ch.isalnum():
            raise _Refused(f"'\\{ch}' (a back-reference, boundary or other special escape) is not a part of this pattern language")
        return _Chars(ch)

    def char_class(self) -> _Chars:
        negated = self.peek() == "^"
        if negated:
            self.take()
        chars, first = set(), True
        while True:
            ch = self.take()
            if ch is None:
                raise _Refused("a '[' is not closed with ']'")
            if ch == "]" and not first:
                break
            first = False
            if ch == "\\":
                escaped = self.escape()
                if escaped.negated:
                    raise _Refused("a negated class escape (\\D, \\W, \\S) inside [...] is not a part of this pattern language")
                chars |= escaped.chars
                continue
            if self.peek() == "-" and self.at + 1 < len(self.text) and self.text[self.at + 1] != "]":
                self.take()
                last = self.take()
                if last == "\\":
                    last = self.take()
                if last is None or ord(last) < ord(ch):
                    raise _Refused(f"the range '{ch}-{last}' runs backwards")
                if ord(last) - ord(ch) > 0x10000:
                    raise _Refused(f"the range '{ch}-{last}' is wider than layer names need")
                chars |= {chr(c) for c in range(ord(ch), ord(last) + 1)}
                continue
            chars.add(ch)
        return _Chars(chars, negated)


class NamePattern:
    """A compiled pattern; `search(name)` answers as `re.search(pattern, name)` would, in time linear in the name."""

    def __init__(self, text: str, states: list, start: int):
        self.pattern, self._states, self._start = text, states, start
        self._steps: dict = {}
        self._first = self._closure({start}, at_begin=True, at_end=False)

    def _closure(self, states, at_begin: bool, at_end: bool) -> frozenset:
        seen, todo = set(), list(states)
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            kind, _, nxt, alt = self._states[s]
            if kind == _SPLIT:
                todo += [t for t in (nxt, alt) if t is not None]
            elif (kind == _BEGIN and at_begin) or (kind == _END and at_end):
                todo.append(nxt)
        return frozenset(seen)

    def _matched(self, current, at_end: bool) -> bool:
        if at_end:
            current = self._closure(current, at_begin=False, at_end=True)
        return any(self._states[s][0] == _MATCH for s in current)

    def search(self, name: str) -> bool:
        current = self._first
        if self._matched(current, at_end=not name):
            return True
        for i, ch in enumerate(name):
            key = (current, ch)
            nxt = self._steps.get(key)
            if nxt is None:
                moved = {self._states[s][2] for s in current if self._states[s][0] == _CHAR and ch in self._states[s][1]}
                nxt = self._closure(moved | {self._start}, at_begin=False, at_end=False)
                if len(self._steps) > _CACHE_LIMIT:
                    self._steps.clear()
                self._steps[key] = nxt
            current = nxt
            if self._matched(current, at_end=i == len(name) - 1):
                return True
        return False


def compile_pattern(text: str) -> NamePattern:
    """The pattern as a NamePattern, or an AdapterError saying in one sentence what cannot be used."""
    if len(text) > MAX_LENGTH:
        raise AdapterError(f"The target pattern is {len(text)} characters long, more than {MAX_LENGTH}: shorten it, or pick a preset.")
    parser = _Parser(text)
    try:
        start, exits = parser.alternation()
        if parser.at < len(text):
            raise _Refused(f"')' at position {parser.at + 1} closes no group")
        parser.patch(exits, parser.state(_MATCH))
    except _Refused as e:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise AdapterError(f"The target pattern {shown!r} cannot be used: {e}; {_LANGUAGE}.") from None
    return NamePattern(text, parser.states, start)
