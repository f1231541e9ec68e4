"""Memoized TextWorld PDDL engine: the same observations and admissible commands, faster.

TextWorld derives every observation and every admissible command from grammar templates, and it
parses each template again (with TatSu) on every use: most of a step's time. The parse of a
template string is a pure function of the string, and so is the query parser's; PDDL-to-SAS
translation (Fast Downward) is a pure function of the domain and problem text and runs twice on
every reset. `install()` caches all three in this process:

- `textworld.envs.pddl.textgen._parse_and_convert`: the parse is cached and a deep copy returned
  (the deriver sets each symbol's context in place);
- `textworld.logic.Rule.parse_conjunctive_query`: the parsed query is cached (read only);
- `fast_downward.pddl2sas` as the PDDL state calls it: the translation per (domain, problem,
  optimize), newest `MAX_TRANSLATIONS` games kept; `sys.argv`, which the translator overwrites,
  is restored.

It patches the libraries for the whole process (the env's worker processes install it; so does
`TextGame(memoize=True)`); `uninstall()` restores them. tests/envs/test_alfworld.py holds the
memoized engine to the stock one, byte for byte, over whole games.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections import OrderedDict

MAX_TRANSLATIONS = 64
_ORIGINALS: dict = {}


class _TranslatorProxy:
    """`fast_downward` as textworld's PDDL state sees it: pddl2sas cached, the rest as is."""

    def __init__(self, module):
        self._module = module
        self._cache: OrderedDict = OrderedDict()

    def __getattr__(self, name):
        return getattr(self._module, name)

    def pddl2sas(self, domain: str, problem: str, verbose: bool = False, optimize: bool = False):
        key = (domain, problem, bool(optimize))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        argv = list(sys.argv)
        try:
            result = self._module.pddl2sas(domain, problem, verbose=verbose, optimize=optimize)
        finally:
            sys.argv[:] = argv
        self._cache[key] = result
        while len(self._cache) > MAX_TRANSLATIONS:
            self._cache.popitem(last=False)
        return result


def installed() -> bool:
    return bool(_ORIGINALS)


def install() -> None:
    """Cache the engine's pure parsing and translation steps in this process (idempotent)."""
    if _ORIGINALS:
        return
    import textworld.envs.pddl.logic as pddl_logic
    import textworld.envs.pddl.textgen as textgen
    from textworld.logic import Rule

    parse = textgen._parse_and_convert

    @functools.lru_cache(maxsize=None)
    def cached_parse(text, rule_name="symbols", trace=False):
        return parse(text, rule_name=rule_name, trace=trace)

    def parse_and_convert(text, rule_name="symbols", trace=False, **kwargs):
        if kwargs or not isinstance(text, str):
            return parse(text, rule_name=rule_name, trace=trace, **kwargs)
        return copy.deepcopy(cached_parse(text, rule_name, bool(trace)))

    query = Rule.__dict__["parse_conjunctive_query"]

    @functools.lru_cache(maxsize=None)
    def cached_query(expr):
        return query.__func__(Rule, expr)

    _ORIGINALS.update(parse=parse, query=query, translator=pddl_logic.fast_downward)
    textgen._parse_and_convert = parse_and_convert
    Rule.parse_conjunctive_query = classmethod(lambda cls, expr: cached_query(expr) if cls is Rule
                                               else query.__func__(cls, expr))
    pddl_logic.fast_downward = _TranslatorProxy(pddl_logic.fast_downward)


def uninstall() -> None:
    """Restore the stock engine."""
    if not _ORIGINALS:
        return
    import textworld.envs.pddl.logic as pddl_logic
    import textworld.envs.pddl.textgen as textgen
    from textworld.logic import Rule

    textgen._parse_and_convert = _ORIGINALS["parse"]
    Rule.parse_conjunctive_query = _ORIGINALS["query"]
    pddl_logic.fast_downward = _ORIGINALS["translator"]
    _ORIGINALS.clear()
