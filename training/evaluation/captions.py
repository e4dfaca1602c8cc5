"""COCO caption metrics in pure Python, numerically equal to pycocoevalcap 1.2.

What is reproduced (pycocoevalcap = https://github.com/salaniz/pycocoevalcap, version 1.2):

* ``ptb_tokenize`` / ``tokenize_captions``: pycocoevalcap's ``PTBTokenizer``, i.e. Stanford
  CoreNLP 3.4.1 ``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` followed by
  removal of the tokens in pycocoevalcap's ``PUNCTUATIONS`` list.  Our tokenizer is an emulation
  of the 3.4.1 JFlex lexer (longest match, rule order, trailing contexts, its normalisations).
  Behaviour worth knowing, all of it the official one:

  - lower-cased; ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``, ``cannot`` -> ``can not``,
    ``gonna`` -> ``gon na``; clitics ``'s 're 'll 've 'm 'd`` split off;
  - hyphenated words (``t-shirt``), numbers (``1,000``, ``3.5``, ``12:30``), fractions
    (``1 1/2`` becomes one token with a non-breaking space), acronyms and many abbreviations
    (``u.s.``, ``mr.``, ``etc.``) stay whole; ``½`` -> ``1/2``, ``€`` -> ``$``, ``£`` -> ``#``;
  - quotes become ``` `` `` / ``''`` / ``` ` ``` / ``'``, dashes ``--``, ellipses ``...``; these and
    ``. , ; : ? ! -`` are dropped.  Brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` and
    are KEPT: pycocoevalcap's list holds ``-LRB-`` etc. in upper case while the tokenizer runs
    with ``-lowerCase``, so ``"a (red) car"`` scores as ``a -lrb- red -rrb- car``;
  - characters Java's tokenizer cannot place (emoji, control characters, ...) are deleted;
  - the official tool tokenizes all captions of one call as a single text (one caption per
    line), and a few rules look past the end of a line: ``"... the letter b."`` followed by a
    caption starting with ``"The "`` gives ``b`` instead of ``b.``.  ``tokenize_captions``
    reproduces this (it lexes the captions as one text, in the same order);
    ``ptb_tokenize`` sees one caption alone.

  Verified against the jar on several hundred thousand generated lines (caption-like text,
  punctuation and Unicode soup; see tests/training/evaluation/test_captions.py).  Known
  differences: (1) a caption containing a line separator other than ``\\n`` (``\\r``,
  U+2028/2029, U+000B/000C) shifts every following caption in the official output (the tool
  pairs output lines with captions by position); we keep captions aligned and treat those
  characters as line breaks inside the caption. (2) An SGML tag whose quoted attribute spans
  captions is not joined across captions. (3) Letters/digits are classified with Java's 2014
  Unicode tables (measured, BMP only), but lower-casing uses Python's: a letter newer than the
  JVM's Unicode version may be lower-cased here and not there.  (4) Exotic longest-match ties
  counted in UTF-16 units around astral characters may differ.

* ``bleu``: ``pycocoevalcap.bleu.Bleu(4)`` -- corpus BLEU-1..4, "closest" reference length
  (ties to the shorter), brevity penalty at corpus level, tiny = 1e-15 / small = 1e-9 smoothing
  constants, and the per-image scores it returns.
* ``rouge_l``: ``pycocoevalcap.rouge.Rouge`` -- LCS over tokens split on single spaces,
  max precision and max recall over the references, F with beta = 1.2, mean over images.
* ``cider_d``: ``pycocoevalcap.cider.Cider`` (CIDEr-D) -- n = 1..4, document frequency over the
  evaluated references, idf = log(#images) - log(max(1, df)), tf-idf vectors, clipped
  similarity min(hyp, ref) * ref / (|hyp| |ref|), Gaussian penalty sigma = 6 on the difference
  of the bigram counts (what the official code calls length), mean over n and references, x10.
* ``meteor``: calls pycocoevalcap's ``Meteor`` (Java) when available, in a worker thread with a
  timeout; the Java process is always closed.

Scorer inputs are tokenized captions: ``gts: {key: [reference, ...]}`` (at least one each) and
``res: {key: [hypothesis]}`` (exactly one each), same keys; per-item outputs follow the key
order of ``gts``.  As in the official code, BLEU and CIDEr split captions on any white space
and ROUGE-L on single spaces (a fraction token ``1\\xa01/2`` is two words for the former, one
for the latter).  Results are bit-for-bit those of pycocoevalcap in our tests (same operation
order), and the test suite requires agreement to 1e-6.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import subprocess
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from training.registry import METRICS

__all__ = [
    "CiderD",
    "bleu",
    "caption_metrics",
    "cider_d",
    "meteor",
    "meteor_available",
    "ptb_tokenize",
    "rouge_l",
    "tokenize_captions",
]

K = TypeVar("K", bound=Hashable)

# ---------------------------------------------------------------------------------------------
# PTB tokenizer (emulation of Stanford CoreNLP 3.4.1 PTBLexer + pycocoevalcap's filtering)
# ---------------------------------------------------------------------------------------------
#
# The lexer is a JFlex scanner: at every position each rule is tried, the rule whose match
# (including its trailing context ``r1/r2``) is longest wins, ties go to the earlier rule, and
# only the ``r1`` part becomes the token.  The rules below are written in Python ``re``
# syntax.  JFlex's ``%caseless`` applies to literal text but not to character classes, so
# literals are wrapped in ``(?i:...)`` and classes are left case-sensitive.
#
# Character classes were measured by running the 3.4.1 jar on every BMP character (so they
# follow Java's Unicode tables of 2014, not Python's): LETTER (PTBLexer's word characters:
# [:letter:] plus some combining marks and the soft hyphen), [:digit:], the characters kept as
# one-character symbol tokens, and the marks that are in LETTER but not in [:letter:].  Each
# string is a run of 8-hex-digit "first last" code point pairs.  Everything else that no rule
# matches (controls, unassigned code points, astral characters) is deleted, as Java does.
_LETTER_RANGES = (
    "0041005A0061007A00AA00AA00AD00AD00B500B500BA00BA00C000D600D800F600F8037D038403860388038A"
    "038C038C038E03A103A3048104830487048A0527053105560559055F05610587059105BD05BF05BF05C105C2"
    "05C405C505C705C705D005EA05F005F20615061A0620065E066E06D306D506EF06FA06FF070F07B107CA07F5"
    "07FA07FA08000815081A081A08240824082808280840085808A008A008A208AC09000939093C094E09500955"
    "09580963097109770979097F098109830985098C098F0990099309A809AA09B009B209B209B609B909BC09C4"
    "09C709C809CB09CE09D709D709DC09DD09DF09E309F009F10A010A030A050A0A0A0F0A100A130A280A2A0A30"
    "0A320A330A350A360A380A390A3C0A3C0A3E0A4F0A590A5C0A5E0A5E0A720A740A810A830A850A8D0A8F0A91"
    "0A930AA80AAA0AB00AB20AB30AB50AB90ABC0AD00AE00AE10B050B0C0B0F0B100B130B280B2A0B300B320B33"
    "0B350B390B3D0B3D0B5C0B5D0B5F0B610B710B710B820B830B850B8A0B8E0B900B920B950B990B9A0B9C0B9C"
    "0B9E0B9F0BA30BA40BA80BAA0BAE0BB90BBE0BC20BC60BC80BCA0BCD0BD00BD00C010C030C050C0C0C0E0C10"
    "0C120C280C2A0C330C350C390C3D0C560C580C590C600C610C850C8C0C8E0C900C920CA80CAA0CB30CB50CB9"
    "0CBD0CBD0CDE0CDE0CE00CE10CF10CF20D050D0C0D0E0D100D120D3A0D3D0D440D460D480D4E0D4E0D600D61"
    "0D7A0D7F0D850D960D9A0DB10DB30DBB0DBD0DBD0DC00DC60E010E3A0E400E4E0E810E820E840E840E870E88"
    "0E8A0E8A0E8D0E8D0E940E970E990E9F0EA10EA30EA50EA50EA70EA70EAA0EAB0EAD0EBD0EC00EC40EC60EC6"
    "0EC80ECD0EDC0EDF0F000F000F400F470F490F6C0F880F8C1000102A103F103F10501055105A105D10611061"
    "10651066106E107010751081108E108E10A010C510C710C710CD10CD10D010FA10FC1248124A124D12501256"
    "12581258125A125D12601288128A128D129012B012B212B512B812BE12C012C012C212C512C812D612D81310"
    "131213151318135A1380138F13A013F41401166C166F167F1681169A16A016EA1700170C170E171117201731"
    "174017511760176C176E1770178017B317D717D717DC17DC18201877188018A818AA18AA18B018F51900191C"
    "1950196D19701974198019AB19C119C71A001A161A201A541AA71AA71B051B331B451B4B1B831BA01BAE1BAF"
    "1BBA1BE51C001C231C4D1C4F1C5A1C7D1CE91CEC1CEE1CF11CF51CF61D001DBF1E001F151F181F1D1F201F45"
    "1F481F4D1F501F571F591F591F5B1F5B1F5D1F5D1F5F1F7D1F801FB41FB61FBC1FBE1FBE1FC21FC41FC61FCC"
    "1FD01FD31FD61FDB1FE01FEC1FF21FF41FF61FFC20712071207F207F2090209C2102210221072107210A2113"
    "211521152119211D212421242126212621282128212A212D212F2139213C213F21452149214E214E21832184"
    "2C002C2E2C302C5E2C602CE42CEB2CEE2CF22CF32D002D252D272D272D2D2D2D2D302D672D6F2D6F2D802D96"
    "2DA02DA62DA82DAE2DB02DB62DB82DBE2DC02DC62DC82DCE2DD02DD62DD82DDE2E2F2E2F3005300630313035"
    "303B303C30413096309D309F30A130FA30FC30FF3105312D3131318E31A031BA31F031FF34004DB54E009FCC"
    "A000A48CA4D0A4FDA500A60CA610A61FA62AA62BA640A66EA67FA697A6A0A6E5A717A71FA722A788A78BA78E"
    "A790A793A7A0A7AAA7F8A801A803A805A807A80AA80CA822A840A873A882A8B3A8F2A8F7A8FBA8FBA90AA925"
    "A930A946A960A97CA984A9B2A9CFA9CFAA00AA28AA40AA42AA44AA4BAA60AA76AA7AAA7AAA80AAAFAAB1AAB1"
    "AAB5AAB6AAB9AABDAAC0AAC0AAC2AAC2AADBAADDAAE0AAEAAAF2AAF4AB01AB06AB09AB0EAB11AB16AB20AB26"
    "AB28AB2EABC0ABE2AC00D7A3D7B0D7C6D7CBD7FBF900FA6DFA70FAD9FB00FB06FB13FB17FB1DFB1DFB1FFB28"
    "FB2AFB36FB38FB3CFB3EFB3EFB40FB41FB43FB44FB46FBB1FBD3FD3DFD50FD8FFD92FDC7FDF0FDFBFE70FE74"
    "FE76FEFCFF21FF3AFF41FF5AFF66FFBEFFC2FFC7FFCAFFCFFFD2FFD7FFDAFFDC"
)

_DIGIT_RANGES = (
    "003000390660066906F006F907C007C90966096F09E609EF0A660A6F0AE60AEF0B660B6F0BE60BEF0C660C6F"
    "0CE60CEF0D660D6F0E500E590ED00ED90F200F29104010491090109917E017E9181018191946194F19D019D9"
    "1A801A891A901A991B501B591BB01BB91C401C491C501C59A620A629A8D0A8D9A900A909A9D0A9D9AA50AA59"
    "ABF0ABF9FF10FF19"
)

_SYMBOL_RANGES = (
    "0022002C003A003E005B005E00600060007B007E00800080009100940096009700A100A900AB00AC00AE00B4"
    "00B600B900BB00BF00D700D700F700F7037E037E038703870589058905BE05BE05C005C005C305C305C605C6"
    "05F305F4060006030606060C06140614061B061B061E061F066A066A066D066D06D406D40700070D07F607F8"
    "096409650E3F0E3F0E4F0E4F1FBD1FBD20132023202620262030203B203E204220442044207020702074207E"
    "2080208E20A020A020A420A420AC20AC2100210121032106210821092114211421162118211E212321252125"
    "2127212721292129212E212E213A213B21402144214A214D214F214F2153215E21902BFF3001300230123012"
    "30FB30FBFF01FF0FFF1AFF20FF3BFF40FF5BFF65FFE0FFE1FFE5FFE6"
)

_MARK_RANGES = (  # in LETTER but not [:letter:]
    "00AD00AD02C202C502D202DF02E502EB02ED02ED02EF036F03750375037803790384038503F603F604830487"
    "055A055F059105BD05BF05BF05C105C205C405C505C705C70615061A064B065E0670067006D606E406E706ED"
    "06FD06FE070F070F071107110730074C07A607B007EB07F309000903093C093C093E094E0951095509620963"
    "0981098309BC09BC09BE09C409C709C809CB09CD09D709D709E209E30A010A030A3C0A3C0A3E0A4F0A810A83"
    "0ABC0ABC0ABE0ACF0B820B820BBE0BC20BC60BC80BCA0BCD0C010C030C3E0C560D3E0D440D460D480E310E31"
    "0E340E3A0E470E4E0EB10EB10EB40EBC0EC80ECD"
)


def _ranges(encoded: str) -> list[tuple[int, int]]:
    return [
        (int(encoded[i : i + 4], 16), int(encoded[i + 4 : i + 8], 16))
        for i in range(0, len(encoded), 8)
    ]


def _char_class(pairs: Iterable[tuple[int, int]]) -> str:
    """A regex character class ``[...]`` from (first, last) code point pairs."""
    body = "".join(
        f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in pairs
    )
    return f"[{body}]"


def _minus(pairs: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Code point ranges ``pairs`` with the ranges ``holes`` taken out."""
    drop = {c for a, b in holes for c in range(a, b + 1)}
    out: list[tuple[int, int]] = []
    for a, b in pairs:
        for c in range(a, b + 1):
            if c in drop:
                continue
            if out and out[-1][1] == c - 1:
                out[-1] = (out[-1][0], c)
            else:
                out.append((c, c))
    return out


_LETTER_PAIRS = _ranges("".join(_LETTER_RANGES))
_DIGIT_PAIRS = _ranges("".join(_DIGIT_RANGES))
_L = _char_class(_LETTER_PAIRS)  # PTBLexer LETTER (letters + marks + soft hyphen)
_JLETTER_PAIRS = _minus(_LETTER_PAIRS, _ranges("".join(_MARK_RANGES)))
_JL = _char_class(_JLETTER_PAIRS)  # [:letter:]
_D = _char_class(_DIGIT_PAIRS)  # [:digit:]
_LD = _char_class(sorted(_LETTER_PAIRS + _DIGIT_PAIRS))  # LETTER | DIGIT
_JLD = _char_class(sorted(_JLETTER_PAIRS + _DIGIT_PAIRS))
_SYM = _char_class(_ranges("".join(_SYMBOL_RANGES)))  # kept as one-character tokens
# [:uppercase:] (only used in a context that decides whether a period is repeated, which the
# punctuation filter drops anyway): Python's table is close enough.
_UPPER = _char_class(
    _minus([(0, 0xFFFF)], [(c, c) for c in range(0x10000)
                           if not (unicodedata.category(chr(c)) == "Lu"
                                   or 0x2160 <= c <= 0x216F or 0x24B6 <= c <= 0x24CF)])
)


def _ci(literal: str) -> str:
    """JFlex %caseless literal text (regex syntax allowed inside; no character classes)."""
    return f"(?i:{literal})"


_SP = r"[ \t\u00a0\u2000-\u200a\u3000]"
_NL_CHARS = "\r\n\u2028\u2029\x0b\x0c\x85"
_NL = r"(?:\r\n|[\r\n\u2028\u2029\x0b\x0c\x85])"
_SPNL = r"[ \t\u00a0\u2000-\u200a\u3000\r\n\u2028\u2029\x0b\x0c\x85]"
_APOS = r"(?:['\u0092\u2019]|" + _ci("&apos;") + ")"
_APOSETC = r"(?:['\u0092\u2019`\u0091\u2018\u201b]|" + _ci("&apos;") + ")"
_SPLET = _ci("&[aeiou](?:acute|grave|uml);")
_LET = f"(?:{_L}|{_SPLET})"
_LETD = f"(?:{_LD}|{_SPLET})"
_WORD = f"{_LET}{_LETD}*(?:[.!?]{_LET}{_LETD}*)*"
_REDAUX = _APOS + "(?:[msdMSD]|" + _ci("re|ve|ll") + ")"
_SWORD = r"[A-Za-z\xad]*[A-MO-Za-mo-z]\xad*"
_SREDAUX = "[nN]" + _APOSETC + "[tT]"
_HYPHEN = r"[\-_\u058a\u2010\u2011]"
_ACRO_SPECIAL = _ci(r"(?:canada|sino|korean|eu|japan|non)-u\.s|u\.s\.-(?:u\.k|u\.s\.s\.r)")
_ACRO = rf"(?:[A-Za-z](?:\.[A-Za-z])*|{_ACRO_SPECIAL})"
_ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{_ACRO_SPECIAL})"
_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
_SGML = (
    r"<(?:[!?][A-Za-z\-][^>\r\n]*"
    rf"|{_NAME}(?:[ ]+{_NAME}(?:[ ]*=[ ]*(?:'[^'\r\n]*'|\"[^\"\r\n]*\"))?)*[ ]*/?"
    rf"|/{_NAME})[ ]*>"
)
_NUMSEP = r"[.:,\xad\u066b\u066c]"
_NUMBER = rf"[\-+]?(?:{_D}+(?:{_NUMSEP}{_D}+)*|(?:{_NUMSEP}{_D}+)+)"
_THING_PART = rf"(?:[dDoOlL]{_APOSETC}{_JLD})?{_JLD}+"
_ABBREV1 = (
    "(?:"
    + _ci(
        "jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu|thurs|fri"
        "|ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev"
        "|okla|penn|tenn|va|vt|wisc?|wyo"
        "|inc|cos?|corp|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys"
        r"|tel|est|ext|sq|jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq|etc|al|seq|bldg"
    )
    + "|A" + _ci("z") + "|A" + _ci("rk") + "|D" + _ci("el") + "|I" + _ci("ll")
    + "|L" + _ci("a") + "|M" + _ci("ass") + "|M" + _ci("iss") + "|O" + _ci("re")
    + "|P" + _ci("a") + "|T" + _ci("ex") + "|W" + _ci("ash")
    + "|" + _ci("pp?t") + "[ye]" + _ci("s?")
    + r")\."
)
_ABBREV4 = (
    "(?:"
    + _ci(
        "mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl"
        "|pvt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst"
        r"|assoc|ens|insp|mlle|mme|msgr|sfc|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph"
        "|invt|elec|natl|m[ft]g|dept|blvd|rd"
    )
    + "|M" + _ci("iss") + f"|{_ACRO})"
)
# Words after which an acronym's period also ends the sentence ("[A]bout": first letter
# case-sensitive, the rest caseless).
_ACRONYM_FOLLOWERS = "|".join(
    w[0] + (_ci(re.escape(w[1:])) if len(w) > 1 else "")
    for w in (
        "About", "According", "Additionally", "After", "An", "A", "As", "At", "But", "Earlier",
        "He", "Her", "Here", "However", "If", "In", "It", "Last", "Many", "More", "Mr.", "Ms.",
        "Now", "Once", "One", "Other", "Our", "She", "Since", "So", "Some", "Such", "That",
        "The", "Their", "Then", "There", "These", "They", "This", "We", "When", "While", "What",
        "Yet", "You",
    )
)
_URL_PATH = r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},\-])?"
_QUOTE_CHARS = (
    "`\u2018\u2019\u201a\u201b\u201c\u201d\x91\x92\x93\x94\u201e\u201f\u2039\u203a\xab\xbb"
)


def _latex_quotes(tok: str, left: bool) -> str:
    """PTBLexer's latexQuotes normalisation."""
    if left:
        tok = re.sub(r"&apos;|'", "`", tok)
        tok = re.sub(r"\"|&quot;", "``", tok)
    else:
        tok = re.sub(r"&apos;|'", "'", tok)
        tok = re.sub(r"\"|&quot;", "''", tok)
    tok = re.sub("[\x91\u2018\u201b\u2039]", "`", tok)
    tok = re.sub("[\x92\u2019\u203a]", "'", tok)
    tok = re.sub("[\x93\u201c\xab]", "``", tok)
    return re.sub("[\x94\u201d\xbb]", "''", tok)


def _soft(tok: str) -> str:
    """removeSoftHyphens: drop U+00AD; a token made only of them becomes "-"."""
    if "\xad" not in tok:
        return tok
    out = tok.replace("\xad", "")
    return out if out else "-"


def _parens(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


_CURRENCY = {"\xa2": "cents", "\xa3": "#", "\x80": "$", "\xa4": "$", "\u20a0": "$", "\u20ac": "$"}
_FRACTIONS = {"\xbc": "1/4", "\xbd": "1/2", "\xbe": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}

# Actions: what a winning rule does with its token text.
_EMIT, _SKIP, _NEWLINE, _PUSHBACK3, _PUSHBACK2, _ACRONYM, _DUP_PERIOD = range(7)

Transform = Callable[[str], str]


_RUN = 0  # bound: the longest match ends at most one character after the non-space run


class _Rule:
    __slots__ = ("action", "bound", "first", "has_t", "name", "patterns", "transform")

    def __init__(
        self,
        name: str,
        patterns: str | list[str],
        first: str,
        transform: Transform | None,
        action: int,
        bound: int | None,
    ) -> None:
        self.name = name
        plist = [patterns] if isinstance(patterns, str) else patterns
        self.patterns = [re.compile(p) for p in plist]
        self.has_t = ["t" in p.groupindex for p in self.patterns]
        self.first = re.compile(first)  # superset of the characters a match can start with
        self.transform = transform
        self.action = action
        # Python's leftmost-first match can be shorter than JFlex's longest one; where that
        # can happen, ``bound`` (a maximum length, or _RUN) says how far to look for longer.
        self.bound = bound


def _r(name: str, patterns: str | list[str], first: str, transform: Transform | None = None,
       action: int = _EMIT, bound: int | None = None) -> _Rule:
    return _Rule(name, patterns, first, transform, action, bound)


_ANY = r"[\s\S]"
_LETTER_FIRST = f"(?:{_L}|&)"

# The rule list, in PTBLexer order (the order decides ties between equally long matches).
# Patterns with a trailing context put the token in group "t".
_RULES: list[_Rule] = [
    _r("prog_langs", _ci(r"c\+\+|[cf]#"), "[cCfF]"),
    _r("assimilations3", _ci("cannot|'twas"), "[cC']", action=_PUSHBACK3),
    _r("assimilations2", _ci("'tis|gonna|gotta|lemme|gimme|wanna"), "[gGlLwW']",
       action=_PUSHBACK2),
    _r("sgml", _SGML, "<", lambda t: re.sub("[ \r\n]", "\xa0", t)),
    _r("spmdash", _ci("&(?:md|mdash|ndash);") + "|[\x96\x97\u2013\u2014\u2015]",
       "[&\x96\x97\u2013\u2014\u2015]", lambda t: "--"),
    _r("spamp", _ci("&amp;"), "&", lambda t: "&"),
    _r("sppunc", _ci("&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"), "&"),
    _r("word_redaux", f"(?P<t>{_WORD}){_REDAUX}", _LETTER_FIRST, _soft),
    _r("sword_sredaux", f"(?P<t>{_SWORD}){_SREDAUX}", r"[A-Za-z\xad]", _soft),
    _r("word", _WORD, _LETTER_FIRST, _soft),
    _r("apoword", [
        f"{_APOS}[nN]{_APOS}?",
        f"[lLdDjJ]{_APOS}",
        _ci("dunkin") + _APOS,
        _ci("somethin") + _APOS,
        _ci("ol") + _APOS,
        _APOS + _ci("em"),
        f"[A-HJ-XZn]{_APOSETC}{_JL}{{2}}{_JL}*",
        f"{_APOS}[2-9]0[sS]",
        _APOS + _ci("till?"),
        f"{_JL}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_JL}*",
        _APOS + _ci("cause"),
        _ci(r"cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"),
        f"[oO]{_APOSETC}[oO]",
    ], f"(?:{_JL}|['\x92\u2019&])", bound=_RUN),
    _r("apoword2", f"(?P<t>[yY]{_APOS}){_JL}", "[yY]"),
    _r("fullurl", _ci("https?") + r"://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},\-]",
       "[hH]"),
    _r("likelyurl",
       [_ci("www") + r"\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}" + _URL_PATH,
        r"(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+" + _ci("com|net|org|edu") + _URL_PATH],
       r"[^ \t\n\f\r\"`'<>|.!?(){},-_$]", bound=_RUN),
    _r("email",
       "(?:" + _ci("&lt;") + "|<)?(?:" + _ci("mailto") + ":)?"
       + r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0{}]*@"
       + r"(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\.)*[^ \t\n\f\r\"<>|(){}.\u00a0]+"
       + "(?:" + _ci("&gt;") + "|>)?",
       "[<&a-zA-Z0-9]", bound=_RUN),
    _r("twitter", f"@[a-zA-Z_][a-zA-Z_0-9]*|#{_LET}+", "[@#]"),
    _r("redaux_ctx", f"(?P<t>{_REDAUX})[^A-Za-z]", "['\x92\u2019&]",
       lambda t: _latex_quotes(t, False)),
    _r("sredaux", _SREDAUX, "[nN]", lambda t: _latex_quotes(t, False)),
    _r("date", f"{_D}{{1,2}}[\\-/]{_D}{{1,2}}[\\-/]{_D}{{2,4}}", _D),
    _r("number", _NUMBER, f"(?:[\\-+.:,\xad\u066b\u066c]|{_D})", _soft),
    _r("subsupnum",
       "[\u207a\u207b\u208a\u208b]?(?:[\u2070\xb9\xb2\xb3\u2074-\u2079]+|[\u2080-\u2089]+)",
       "[\u207a\u207b\u208a\u208b\u2070\xb9\xb2\xb3\u2074-\u2079\u2080-\u2089]"),
    _r("frac", f"(?:{_D}{{1,4}}[\\- \xa0])?{_D}{{1,4}}(?:\\\\?/|\u2044){_D}{{1,4}}", _D,
       lambda t: t.replace(" ", "\xa0")),
    _r("frac2", "[\xbc\xbd\xbe\u2153-\u215e]", "[\xbc\xbd\xbe\u2153-\u215e]",
       lambda t: _FRACTIONS.get(t, t)),
    _r("tbspec",
       "-" + _ci("rrb|lrb|rcb|lcb|rsb|lsb") + "-|"
       + _ci(r"c\.d\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls")
       + "|" + _ci("cap") + _APOS + "[nN]|[cC]" + _APOS + _ci("est"),
       "[-cCpPaAsS]", lambda t: re.sub("(?i)&amp;", "&", t)),
    _r("thing3",
       r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}",
       "[A-Za-z0-9]", bound=_RUN),
    _r("dolsign", r"[A-Z]*\$|#", r"[A-Z$#]"),
    _r("dolsign2", "[\xa2\xa3\xa4\xa5\x80\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]",
       "[\xa2\xa3\xa4\xa5\x80\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]",
       lambda t: _CURRENCY.get(t, t)),
    _r("acronym",
       rf"(?P<t>{_ACRO}\.){_SPNL}+(?:{_ACRONYM_FOLLOWERS}|{_SGML}){_SPNL}",
       "[A-Za-z]", action=_ACRONYM),
    _r("abbrev3", "(?P<t>" + _ci(r"(?:ca|figs?|prop|nos?|art|bldg|pp|op)\.") + f"){_SPNL}?{_D}",
       "[cCfFpPnNaAbBoO]"),
    _r("pty_ltd", "(?P<t>(?:" + _ci("pt") + "[eyEY]|" + _ci("co") + r")\.)" + _SP
       + _ci("ltd|lim"), "[pPcC]"),
    _r("abbrev1_sentend", f"(?P<t>{_ABBREV1}){_SPNL}(?:{_SPNL}|{_UPPER}|{_SGML})",
       "[A-Za-z]", action=_DUP_PERIOD),
    _r("abbrev1_ctx", f"(?P<t>{_ABBREV1}){_ANY}{_ANY}", "[A-Za-z]"),
    _r("abbrev1", _ABBREV1, "[A-Za-z]", action=_DUP_PERIOD),
    _r("abbrev2", _ABBREV4 + r"\.", "[A-Za-z]", bound=_RUN),
    _r("abbrev4_ctx", f"(?P<t>{_ABBREV4}){_SP}", "[A-Za-z]", bound=_RUN),
    _r("acro_ctx", f"(?P<t>{_ACRO}){_SPNL}", "[A-Za-z]"),
    _r("tbspec2", f"(?P<t>{_APOS}[0-9][0-9]){_SPNL}", "['\x92\u2019&]"),
    _r("filename",
       f"(?P<t>{_LD}+(?:\\.{_LD}+)*\\." + _ci(
           "bat|bmp|c|class|cgi|cpp|dll|docx?|exe|gif|gz|h|html?|jar|java|jpe?g|mov|mp3|pdf"
           "|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip"
       ) + ")(?:" + _SPNL + "|[.?!,])",
       _L + "|" + _D, bound=_RUN),
    _r("word_period", rf"(?P<t>{_WORD}\.)[,;:]", _LETTER_FIRST, _soft),
    _r("phone",
       r"(?:\([0-9]{2,3}\)[ \xa0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \xa0])?[0-9]{2,4}[\- \xa0])"
       r"[0-9]{3,4}[\- \xa0]?[0-9]{3,5}"
       r"|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}",
       r"[(+0-9]", lambda t: _parens(t.replace(" ", "\xa0")), bound=48),
    _r("dblquote_left", "(?P<t>\"|" + _ci("&quot;") + ")[A-Za-z0-9$]", "[\"&]",
       lambda t: _latex_quotes(t, True)),
    _r("dblquote", "\"|" + _ci("&quot;"), "[\"&]", lambda t: _latex_quotes(t, False)),
    _r("del", "\x7f", "\x7f", action=_SKIP),
    _r("lessthan", "<|" + _ci("&lt;"), "[<&]", lambda t: "<"),
    _r("greaterthan", ">|" + _ci("&gt;"), "[>&]", lambda t: ">"),
    _r("smiley", r"(?P<t>[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]])[^A-Za-z0-9]", "[<>:;=]",
       _parens),
    _r("asian_smiley",
       r"[\^x=~<>]\.\[\^x=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"
       r"|\([\^x=~<>']-[\^x=~<>'`]\)|\xaf\\_\(\u30c4\)_/\xaf",
       r"[\^x=~<>'\-(\xaf]", _parens),
    _r("brackets", r"[()\[\]{}]", r"[()\[\]{}]", lambda t: _BRACKETS[t]),
    _r("hyphens", r"-+", "-", lambda t: "--" if 3 <= len(t) <= 4 else t),
    _r("ldots", r"\.{3,5}|(?:\.[ \xa0]){2,4}\.|[\x85\u2026]", "[.\x85\u2026]",
       lambda t: "..."),
    _r("fnmarks", "@+|#+|_+", "[@#_]"),
    _r("asts", r"\*+|(?:\\\*){1,3}", r"[*\\]"),
    _r("insentp", "[,;:]", "[,;:]"),
    _r("qmarks", "[?!]+", "[?!]"),
    _r("period", "[.\xa1\xbf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa]",
       "[.\xa1\xbf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa]"),
    _r("equals", "=", "="),
    _r("slash", "/", "/"),
    _r("hthing_period",
       rf"(?P<t>[A-Za-z0-9][A-Za-z0-9.,\xad]*(?:-(?:{_ACRO2}\.|[A-Za-z0-9\xad]+))+\.)[,;:]",
       "[A-Za-z0-9]", _soft, bound=_RUN),
    _r("hthing", rf"[A-Za-z0-9][A-Za-z0-9.,\xad]*(?:-(?:{_ACRO2}\.|[A-Za-z0-9\xad]+))+",
       "[A-Za-z0-9]", _soft, bound=_RUN),
    _r("thing_period", f"(?P<t>{_THING_PART}(?:{_HYPHEN}{_THING_PART})*\\.)[,;:]",
       f"(?:{_JLD})", bound=_RUN),
    _r("thing", f"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*", f"(?:{_JLD})", bound=_RUN),
    _r("thinga_period", r"(?P<t>[A-Z]+(?:(?:[+&]|" + _ci("&amp;") + r")[A-Z]+)+\.)[,;:]",
       "[A-Z]", lambda t: re.sub("(?i)&amp;", "&", t)),
    _r("thinga", r"[A-Z]+(?:(?:[+&]|" + _ci("&amp;") + r")[A-Z]+)+", "[A-Z]",
       lambda t: re.sub("(?i)&amp;", "&", t)),
    _r("quote_left", "(?P<t>')[A-Za-z][^ \t\n\r\xa0]", "'", lambda t: "`"),
    _r("redaux", _REDAUX, "['\x92\u2019&]", lambda t: _latex_quotes(t, False)),
    _r("quotes", f"[{_QUOTE_CHARS}]{{1,2}}|''|{_APOS}", f"['&{_QUOTE_CHARS}]",
       lambda t: _latex_quotes(t, False)),
    _r("duckfeet", "<<|>>", "[<>]"),
    _r("symbol", _SYM, _SYM),
    _r("spaces", _SP + "+", _SP, action=_SKIP),
    _r("newline", _NL, f"[{_NL_CHARS}]", action=_NEWLINE),
    _r("nbsp", _ci("&nbsp;"), "&", action=_SKIP),
]

# Fast paths (same results as the rules, checked by the tests): an ASCII word followed by white
# space, or by one of , ; : ! ? . and white space, is a token of its own unless it is one of
# the words some rule treats specially (assimilations, abbreviations, one-letter acronyms).
_ASSIMILATED = frozenset({"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"})
_FAST_WORD = re.compile(r"[A-Za-z]+(?=([,;:!?.]?)(?:[ \n]|\Z))")
_FAST_PUNCT = re.compile(r"[,;:!?](?=[ \n]|\Z)|\.(?=\n|\Z| [^.\xa0\n])")
_ABBREVIATION = re.compile(
    "|".join([_ABBREV1, _ABBREV4 + r"\.", _ci(r"(?:ca|figs?|prop|nos?|art|bldg|pp|op)\."),
              "(?:" + _ci("pt") + "[eyEY]|" + _ci("co") + r")\."])
)
_SPACE_CHARS = frozenset(" \t\u00a0\u3000" + "".join(chr(c) for c in range(0x2000, 0x200B)))
_NO_SPACE_RUN = re.compile(r"[^ \t\u00a0\u2000-\u200a\u3000\r\n\u2028\u2029\x0b\x0c\x85]*")


def _run_end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    m = pattern.match(text, pos)
    return m.end() if m is not None else pos


class _Lexer:
    """Runs the rules over a whole text; yields (token, start offset) and newline markers."""

    def __init__(self) -> None:
        self._by_char: dict[str, list[_Rule]] = {}

    def _candidates(self, ch: str) -> list[_Rule]:
        cands = self._by_char.get(ch)
        if cands is None:
            cands = [r for r in _RULES if r.first.match(ch)]
            self._by_char[ch] = cands
        return cands

    @staticmethod
    def _match(rule: _Rule, text: str, pos: int) -> tuple[int, str] | None:
        """JFlex's match of ``rule`` at ``pos``: (total length with trailing context, token)."""
        best: tuple[int, str] | None = None
        for pattern, has_t in zip(rule.patterns, rule.has_t):
            m = pattern.match(text, pos)
            if m is None:
                continue
            if rule.bound is not None:
                # Look for a longer match than Python's leftmost-first one, longest first.
                if rule.bound == _RUN:
                    limit = _run_end(_NO_SPACE_RUN, text, pos) + 1
                else:
                    limit = pos + rule.bound
                for end in range(min(len(text), limit), m.end(), -1):
                    longer = pattern.fullmatch(text, pos, end)
                    if longer is not None:
                        m = longer
                        break
            total = m.end() - pos
            if best is None or total > best[0]:
                best = (total, m.group("t") if has_t else m.group())
        return best

    def tokens(self, text: str) -> list[tuple[str, int]]:
        """Tokens of ``text`` as (token, start); a newline in the input gives ("\\n", pos)."""
        out: list[tuple[str, int]] = []
        n = len(text)
        pos = 0
        while pos < n:
            ch = text[pos]
            if ch == " " or ch == "\t":  # only white space can start here: skip the run
                pos += 1
                while pos < n and text[pos] in _SPACE_CHARS:
                    pos += 1
                continue
            if ch.isascii():
                if ch.isalpha():
                    m = _FAST_WORD.match(text, pos)
                    if m is not None:
                        word = m.group()
                        if word.lower() not in _ASSIMILATED and (
                            m.group(1) != "." or not _ABBREVIATION.fullmatch(word + ".")
                        ):
                            out.append((word, pos))
                            pos = m.end()
                            continue
                elif ch == "\n":
                    out.append(("\n", pos))
                    pos += 1
                    continue
                else:
                    m = _FAST_PUNCT.match(text, pos)
                    if m is not None:
                        out.append((m.group(), pos))
                        pos += 1
                        continue
            best_len = 0
            best: tuple[_Rule, str] | None = None
            for rule in self._candidates(ch):
                found = self._match(rule, text, pos)
                if found is not None and found[0] > best_len:
                    best_len, best = found[0], (rule, found[1])
            if best is None:  # untokenizable or white space: deleted
                pos += 1
                continue
            rule, tok = best
            action = rule.action
            if action in (_SKIP, _NEWLINE):
                if action == _NEWLINE:
                    out.append(("\n", pos))
                pos += len(tok)
                continue
            if action in (_PUSHBACK3, _PUSHBACK2):
                tok = tok[: len(tok) - (3 if action == _PUSHBACK3 else 2)]
                out.append((tok, pos))
                pos += len(tok)
                continue
            if action == _ACRONYM:
                if len(tok) == 2:  # "I." before "The": the letter, then the period again
                    out.append((tok[0], pos))
                    pos += 1
                else:  # "U.S." before "The": the acronym, then its period again
                    out.append((tok, pos))
                    pos += len(tok) - 1
                continue
            if action == _DUP_PERIOD:
                out.append((tok, pos))
                pos += len(tok) - 1
                continue
            out.append((rule.transform(tok) if rule.transform else tok, pos))
            pos += len(tok)
        return out


_LEXER = _Lexer()

_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _to_utf16_units(text: str) -> str:
    """Java strings are UTF-16: split astral characters into their two surrogates."""

    def split(m: re.Match[str]) -> str:
        c = ord(m.group()) - 0x10000
        return chr(0xD800 + (c >> 10)) + chr(0xDC00 + (c & 0x3FF))

    return _ASTRAL.sub(split, text)


def _from_utf16_units(tok: str) -> str:
    return tok.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (compared after -lowerCase, so the
# upper-case bracket names never match).
_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
     "--", "...", ";"]
)


def _caption_tokens(lines: Sequence[str]) -> list[list[str]]:
    """Lex ``lines`` as one text (joined by newlines); the kept tokens of each line."""
    text = "\n".join(lines)
    astral = _ASTRAL.search(text) is not None
    if astral:  # Java counts UTF-16 code units: lex the surrogate form
        lines = [_to_utf16_units(line) for line in lines]
        text = "\n".join(lines)
    ends: list[int] = []
    end = -1
    for line in lines:
        end += len(line) + 1
        ends.append(end)  # offset of the newline after the line
    spans: list[list[str]] = [[] for _ in lines]
    i = 0
    for tok, start in _LEXER.tokens(text):
        if tok == "\n":
            continue
        while start > ends[i]:
            i += 1
        spans[i].append((_from_utf16_units(tok) if astral else tok).lower())
    # Java prints each line's tokens joined by spaces; pycocoevalcap takes
    # line.rstrip().split(" ") and drops PUNCTUATIONS (rstrip matters only for the rare token
    # ending in a character Python counts as white space, e.g. U+3000 inside an e-mail token).
    out: list[list[str]] = []
    for words in spans:
        line = " ".join(words).rstrip()
        out.append([w for w in line.split(" ") if w not in _PUNCTUATIONS] if line else [])
    return out


def ptb_tokenize(text: str) -> list[str]:
    """Tokens of one caption as pycocoevalcap's PTBTokenizer gives them (see module doc).

    The caption is tokenized alone (as the last line of the official input file would be).
    """
    return _caption_tokens([text.replace("\n", " ")])[0]


def tokenize_captions(captions: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """``{key: [caption, ...]}`` -> ``{key: ["tok tok ...", ...]}``, like ``PTBTokenizer.tokenize``.

    All captions are lexed as one text, one caption per line, in mapping order -- as the
    official tool does -- so the rare rules that look across a line end behave the same.
    """
    keys: list[K] = []
    lines: list[str] = []
    for key, caps in captions.items():
        if isinstance(caps, str):
            raise TypeError(f"captions[{key!r}] must be a sequence of strings, not a string")
        for cap in caps:
            keys.append(key)
            lines.append(cap.replace("\n", " "))
    out: dict[K, list[str]] = {key: [] for key in captions}
    for key, toks in zip(keys, _caption_tokens(lines)):
        out[key].append(" ".join(toks))
    return out


# ---------------------------------------------------------------------------------------------
# Scorers (inputs already tokenized; strings of space-separated tokens)
# ---------------------------------------------------------------------------------------------


def _check(gts: Mapping[K, Sequence[str]], res: Mapping[K, Sequence[str]]) -> list[K]:
    """The key order of ``gts`` after checking the scorer contract; ValueError otherwise."""
    for key in gts:
        if key not in res:
            raise ValueError(f"key {key!r} is in gts but missing from res")
    for key in res:
        if key not in gts:
            raise ValueError(f"key {key!r} is in res but not in gts")
    for key in gts:
        refs, hyp = gts[key], res[key]
        if isinstance(refs, str) or isinstance(hyp, str):
            raise TypeError(f"gts[{key!r}] and res[{key!r}] must be lists of strings")
        if len(refs) < 1:
            raise ValueError(f"gts[{key!r}] has no reference caption")
        if len(hyp) != 1:
            raise ValueError(f"res[{key!r}] must hold exactly one hypothesis, got {len(hyp)}")
    return list(gts)


def _ngram_counts(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts of all 1..n-grams, inserted in the official order (by n, then position)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        counts.update(zip(*[words[i:] for i in range(k)]))
    return counts


def bleu(
    gts: Mapping[K, Sequence[str]], res: Mapping[K, Sequence[str]], n: int = 4
) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and per-item scores, as ``pycocoevalcap.bleu.Bleu(n)`` returns them.

    Returns ``([B1..Bn], [[B1 per item], ..., [Bn per item]])``.
    """
    keys = _check(gts, res)
    tiny, small = 1e-15, 1e-9
    per_item: list[list[float]] = [[] for _ in range(n)]
    total_guess = [0] * n
    total_correct = [0] * n
    total_test = 0
    total_ref = 0
    for key in keys:
        ref_lens: list[int] = []
        max_counts: dict[tuple[str, ...], int] = {}
        for ref in gts[key]:
            words = ref.split()
            ref_lens.append(len(words))
            for gram, c in _ngram_counts(words, n).items():
                if c > max_counts.get(gram, 0):
                    max_counts[gram] = c
        hyp = res[key][0].split()
        test_len = len(hyp)
        guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for gram, c in _ngram_counts(hyp, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), c)
        # "closest" effective reference length; ties go to the shorter reference
        ref_len = min((abs(rl - test_len), rl) for rl in ref_lens)[1]
        total_test += test_len
        total_ref += ref_len
        score = 1.0
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            score *= (float(correct[k]) + tiny) / (float(guess[k]) + small)
            per_item[k].append(score ** (1.0 / (k + 1)))
        ratio = (test_len + tiny) / (ref_len + small)
        if ratio < 1:
            for k in range(n):
                per_item[k][-1] *= math.exp(1 - 1 / ratio)
    corpus: list[float] = []
    score = 1.0
    for k in range(n):
        score *= float(total_correct[k] + tiny) / (total_guess[k] + small)
        corpus.append(score ** (1.0 / (k + 1)))
    ratio = (total_test + tiny) / (total_ref + small)
    if ratio < 1:
        corpus = [b * math.exp(1 - 1 / ratio) for b in corpus]
    return corpus, per_item


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, Crochemore et al. 2001)."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, tok in enumerate(b):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for tok in a:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def rouge_l(
    gts: Mapping[K, Sequence[str]], res: Mapping[K, Sequence[str]]
) -> tuple[float, list[float]]:
    """Mean ROUGE-L (beta = 1.2) and per-item scores, as ``pycocoevalcap.rouge.Rouge``."""
    keys = _check(gts, res)
    beta = 1.2
    scores: list[float] = []
    for key in keys:
        cand = res[key][0].split(" ")  # the official code splits on single spaces
        prec: list[float] = []
        rec: list[float] = []
        for ref in gts[key]:
            toks = ref.split(" ")
            lcs = _lcs_length(toks, cand)
            prec.append(lcs / float(len(cand)))
            rec.append(lcs / float(len(toks)))
        p, r = max(prec), max(rec)
        if p != 0 and r != 0:
            scores.append(((1 + beta**2) * p * r) / float(r + beta**2 * p))
        else:
            scores.append(0.0)
    return float(np.mean(np.array(scores))), scores


#: One reference set prepared by ``CiderD.references``: per reference, its tf-idf vectors
#: (one {n-gram: weight} dict per n), their norms and its bigram count ("length").
_CiderVectors = tuple[list[dict[tuple[str, ...], float]], list[float], int]


class CiderD:
    """CIDEr-D with document frequencies fixed by a corpus of reference sets.

    ``cider_d`` builds one over the evaluated references, as pycocoevalcap does. Self-critical
    training (Rennie et al. 2017; ``training.self_critical``) builds one over the training
    split's references and scores sampled captions against each image's references, as the
    reference SCST code does with its precomputed training document frequencies.

    ``corpus``: one sequence of tokenized references per image (an image's n-grams count once
    in the document frequency). ``score(candidate, self.references(refs))`` is the per-item
    CIDEr-D of pycocoevalcap (x10 included); ``references`` is separate so a caller scoring
    several candidates against one image prepares its references once.
    """

    n, sigma = 4, 6.0

    def __init__(self, corpus: Iterable[Sequence[str]]) -> None:
        doc_freq: dict[tuple[str, ...], int] = {}
        images = 0
        for refs in corpus:
            images += 1
            grams = {g for ref in refs for g in _ngram_counts(ref.split(), self.n)}
            for gram in grams:
                doc_freq[gram] = doc_freq.get(gram, 0) + 1
        if images == 0:
            raise ValueError("CiderD: the corpus holds no reference set")
        log_df = np.log(np.arange(1, images + 1, dtype=np.float64)).tolist()  # log(df), df>=1
        #: log(#images): the idf of an n-gram found in no reference set
        self.ref_len = float(np.log(float(images)))
        self.idf = {gram: self.ref_len - log_df[df - 1] for gram, df in doc_freq.items()}

    def _vectors(self, counts: Counter[tuple[str, ...]]) -> _CiderVectors:
        n = self.n
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * self.idf.get(gram, self.ref_len)
            vec[k][gram] = w
            norm[k] += w**2
        length = sum(vec_tf for gram, vec_tf in counts.items() if len(gram) == 2)  # bigrams
        return vec, [math.sqrt(x) for x in norm], length

    def references(self, refs: Sequence[str]) -> list[_CiderVectors]:
        """An image's tokenized references, prepared for ``score``."""
        return [self._vectors(_ngram_counts(ref.split(), self.n)) for ref in refs]

    def score(self, candidate: str, refs: Sequence[_CiderVectors]) -> float:
        """CIDEr-D of one tokenized candidate against ``references(...)`` of its image."""
        vec_h, norm_h, len_h = self._vectors(_ngram_counts(candidate.split(), self.n))
        total = [0.0] * self.n
        for vec_r, norm_r, len_r in refs:
            delta = float(len_h - len_r)
            penalty = math.e ** (-(delta**2) / (2 * self.sigma**2))
            for k in range(self.n):
                val = 0.0
                ref_k = vec_r[k]
                for gram, w in vec_h[k].items():
                    w_r = ref_k.get(gram, 0.0)
                    val += min(w, w_r) * w_r
                if norm_h[k] != 0 and norm_r[k] != 0:
                    val /= norm_h[k] * norm_r[k]
                total[k] += val * penalty
        return float(np.mean(np.array(total))) / len(refs) * 10.0


def cider_d(
    gts: Mapping[K, Sequence[str]], res: Mapping[K, Sequence[str]]
) -> tuple[float, list[float]]:
    """Corpus CIDEr-D and per-item scores, as ``pycocoevalcap.cider.Cider`` computes them
    (document frequencies over the evaluated references)."""
    keys = _check(gts, res)
    scorer = CiderD(gts[key] for key in keys)
    scores = [scorer.score(res[key][0], scorer.references(gts[key])) for key in keys]
    return float(np.mean(np.array(scores))), scores


# ---------------------------------------------------------------------------------------------
# METEOR (Java, through pycocoevalcap)
# ---------------------------------------------------------------------------------------------


def meteor_available() -> bool:
    """True when pycocoevalcap's Meteor can run: the package imports and ``java`` is on PATH."""
    if shutil.which("java") is None:
        return False
    try:
        from pycocoevalcap.meteor.meteor import Meteor  # noqa: F401
    except Exception:
        return False
    return True


def meteor(
    gts: Mapping[K, Sequence[str]],
    res: Mapping[K, Sequence[str]],
    *,
    timeout: float = 900.0,
) -> tuple[float, list[float]] | None:
    """METEOR 1.5 through ``pycocoevalcap.meteor.Meteor``; None when it is not available.

    The Java process is started, used and always closed here; if it does not answer within
    ``timeout`` seconds it is killed and RuntimeError is raised (it never hangs).  Line breaks
    inside captions (which would desynchronise the official line protocol) become spaces.
    """
    keys = _check(gts, res)
    if not meteor_available():
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    def flat(s: str) -> str:
        return s.replace("\r", " ").replace("\n", " ")

    gts2 = {key: [flat(r) for r in gts[key]] for key in keys}
    res2 = {key: [flat(res[key][0])] for key in keys}
    try:
        scorer = Meteor()
    except OSError as exc:
        raise RuntimeError(f"METEOR: could not start java: {exc}") from exc
    proc: subprocess.Popen[bytes] = scorer.meteor_p
    result: list[Any] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            result.append(scorer.compute_score(gts2, res2))
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    worker = threading.Thread(target=work, name="meteor", daemon=True)
    try:
        worker.start()
        worker.join(timeout)
        timed_out = worker.is_alive()
    finally:
        # Kill first (closing a pipe that the worker is blocked reading would wait for the
        # read), let the worker see EOF, then close the pipes.
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        worker.join(10.0)
        if not worker.is_alive():
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
        # Meteor.__del__ takes its lock; a failed compute_score leaves it held.
        scorer.lock = threading.Lock()
    if timed_out:
        raise RuntimeError(f"METEOR: no answer from java within {timeout:.0f} s; process killed")
    if errors or not result:
        err = errors[0] if errors else None
        raise RuntimeError(f"METEOR: the java scorer failed ({err!r})") from err
    score, scores = result[0]
    return float(score), [float(s) for s in scores]


# ---------------------------------------------------------------------------------------------
# Metric entry point
# ---------------------------------------------------------------------------------------------


def caption_metrics(
    references: Mapping[K, Sequence[str]],
    predictions: Mapping[K, str],
    *,
    use_meteor: bool | None = None,
) -> dict[str, float]:
    """COCO caption metrics from raw strings: ``{"bleu1".."bleu4", "rouge_l", "cider"}``.

    ``references``: key -> reference captions (at least one); ``predictions``: key -> one
    caption; the key sets must be equal.  Both sides are PTB-tokenized (each side as one
    text, in the order of ``references``, like COCOEvalCap).  ``"meteor"`` is added when
    ``use_meteor`` is True, or None and Java + pycocoevalcap are available; ``use_meteor=True``
    without them raises RuntimeError.  Values are on pycocoevalcap's scale (fractions; CIDEr
    about 0-10).
    """
    for key in predictions:
        if key not in references:
            raise ValueError(f"prediction key {key!r} has no references")
    for key in references:
        if key not in predictions:
            raise ValueError(f"reference key {key!r} has no prediction")
    for key, refs in references.items():
        if isinstance(refs, str):
            raise TypeError(f"references[{key!r}] must be a sequence of strings, not a string")
        if len(refs) == 0:
            raise ValueError(f"references[{key!r}] is empty")
        if not isinstance(predictions[key], str):
            raise TypeError(f"predictions[{key!r}] must be a string")
    if use_meteor and not meteor_available():
        raise RuntimeError(
            "METEOR requested but unavailable: it needs the pycocoevalcap package and a "
            "`java` executable on PATH"
        )
    keys = list(references)
    gts = tokenize_captions({key: list(references[key]) for key in keys})
    res = tokenize_captions({key: [predictions[key]] for key in keys})
    b, _ = bleu(gts, res)
    out = {f"bleu{i + 1}": float(v) for i, v in enumerate(b)}
    out["rouge_l"] = rouge_l(gts, res)[0]
    out["cider"] = cider_d(gts, res)[0]
    if use_meteor is not False and meteor_available():
        m = meteor(gts, res)
        if m is not None:
            out["meteor"] = m[0]
    return out


METRICS.register("caption_metrics", caption_metrics)
