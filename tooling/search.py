"""Hybrid tool search: a keyword scorer fused with cosine similarity from an offline embedding model.

Pure Python + numpy, no Django: the per-app tool index builds one :class:`ToolSearchIndex` from
the app's visible tools and asks it questions.

Keyword side. Every tool is a bag of *terms*: the words of its action, module (its category),
aliases, tags, description and category description, split on ``_ . -``, camelCase and spaces,
case- and accent-folded, lightly stemmed (plural, -ing, -ed, final e) and weighted by the field
they came from (action 1.0 > alias 0.9 > module/tag 0.75 > description 0.5 > category text 0.3).
A query term hits a tool exactly, through a synonym (English/English and French/English, see
:data:`SYNONYM_GROUPS`), or as a prefix of one of its words ("rea" → read). A tool's keyword score
is the IDF-weighted share of the query's terms it answers, times how well they answer, nudged by
how much of the tool's action name the query covers; an exact ``module.action`` or action name
scores 1.

Semantic side. The static model of :mod:`tooling.embeddings` embeds every tool once at build time
and the query (plus the English words the synonym table found for it, which is what makes French
queries work on an English-only model) at search time; cosine similarity is rescaled to 0..1.

Fusion. A weighted sum ``0.6·keyword + 0.4·semantic`` is the default. On the 86-query set of
``bench/bench_search.py`` it and reciprocal-rank fusion are within one query of each other on
recall@5 (the weighted sum ahead with 1,000 distractor tools and on the project's own modules, RRF
ahead on the 22 stand-in built-ins; figures in ``bench/README.md``), and both beat keyword-only by
3-6 points. The weighted sum stays the default because its score also means something on its own
(how well a tool answers the query), which is what the API's ``relevance`` promises; RRF's only
says where a tool ranked. ``ToolSearchIndex.build(..., fusion="rrf")`` keeps RRF measurable.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from digitorn_site.lazy import lazy_module
from tooling.embeddings import (
    MODEL_ENV_VAR,
    Embedder,
    EmbeddingModelError,
    configured_model_path,
    load_embedder,
)

# numpy loads on the first index build or search, not when the registry is imported (issue 14).
np = lazy_module("numpy")

log = logging.getLogger("digitorn.tooling.search")

MAX_QUERY_CHARS = 1000
FUSIONS = ("weighted", "rrf")

# Field weights: which part of a tool a word came from says how much a hit on it is worth.
_W_ACTION = 1.0
_W_ALIAS = 0.9
_W_MODULE = 0.75
_W_TAG = 0.75
_W_DESCRIPTION = 0.5
_W_CATEGORY = 0.3
# How much a hit through a synonym or a prefix is worth next to the word itself.
_SYNONYM_FACTOR = 0.85
_PREFIX_MIN_CHARS = 3
_PREFIX_MAX_TERMS = 64
# Weighted fusion: relevance = _KW_WEIGHT * keyword + (1 - _KW_WEIGHT) * semantic.
_KW_WEIGHT = 0.6
# Cosines of the static model between a query and an unrelated tool sit around 0.1-0.3 and
# between a query and the tool it describes around 0.5-0.8; rescale so that 0 means "unrelated".
_COS_FLOOR = 0.15
_COS_CEIL = 0.9
_RRF_K = 10
_MIN_RELEVANCE = 0.05
# Weight of a query word no tool uses, as a share of the rarest word's IDF.
_UNKNOWN_WORD_SHARE = 0.6

SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    # First word: the English word the group means (also what a French query is "translated" to
    # for the English-only embedding model). French verbs come as infinitive, imperative and
    # present forms, the ways people type a request.
    ("read", "lire", "lis", "lit", "lisez", "lecture", "cat", "view", "open", "ouvrir", "ouvre",
     "afficher", "affiche", "show", "display"),
    ("write", "ecrire", "ecris", "ecrivez", "ecriture", "save", "enregistrer", "enregistre",
     "sauvegarder", "sauvegarde", "sauver", "put", "overwrite", "ecraser", "ecrase"),
    ("file", "fichier", "document"),
    ("directory", "folder", "dir", "dossier", "repertoire"),
    ("delete", "remove", "rm", "del", "erase", "unlink", "supprimer", "supprime", "effacer", "efface",
     "retirer", "destroy", "purge"),
    ("search", "find", "chercher", "cherche", "rechercher", "recherche", "trouver", "trouve", "lookup",
     "locate", "seek"),
    ("grep", "pattern", "regex", "regexp", "motif", "mention", "occurrence", "word", "mot"),
    ("run", "execute", "exec", "launch", "executer", "lancer", "lance", "invoke", "start", "demarrer"),
    ("command", "commande", "cmd", "commandline"),
    ("shell", "bash", "terminal", "console", "sh", "zsh"),
    ("query", "requete", "sql", "select"),
    ("database", "db", "bdd", "sqlite", "postgres", "postgresql", "mysql"),
    ("memory", "memoire", "memo"),
    ("remember", "memorize", "memoriser", "memorise", "retenir", "retiens", "souvenir", "souviens",
     "store", "stocker", "noter"),
    ("ask", "interroger", "interroge", "question", "demander", "demande"),
    ("recall", "rappeler", "rappelle", "retrieve", "recuperer", "recupere", "remind", "know", "sais", "savoir"),
    ("forget", "oublier", "oublie"),
    ("download", "telecharger", "telecharge", "fetch", "get", "retrieve", "recuperer"),
    ("send", "envoyer", "envoie", "post", "submit", "upload", "publish", "publier", "poster"),
    ("list", "lister", "liste", "ls", "enumerate"),
    ("move", "deplacer", "deplace", "mv", "rename", "renommer", "renomme"),
    ("copy", "copier", "copie", "cp", "duplicate", "dupliquer", "clone"),
    ("edit", "modify", "modifier", "modifie", "change", "changer", "update", "replace", "remplacer",
     "remplace", "patch", "editer", "swap", "substitute", "fix", "typo", "corriger", "corrige", "rewrite"),
    ("create", "creer", "cree", "make", "new", "nouveau", "nouvelle", "add", "ajouter", "ajoute", "mkdir"),
    ("stat", "info", "metadata", "metadonnees", "details", "size", "taille", "exists", "existe", "big",
     "bigger", "large", "larger", "small", "smaller", "permission", "droits"),
    ("table", "tableau"),
    ("schema", "structure", "describe", "decrire", "decris"),
    ("column", "colonne", "field", "champ"),
    ("web", "http", "https", "url", "website", "site", "internet", "lien", "link"),
    ("request", "requete", "call", "appel", "appeler", "appelle"),
    ("row", "ligne", "record", "enregistrement", "entry", "entree"),
    ("text", "texte", "content", "contenu"),
    ("email", "mail", "courriel"),
    ("message", "msg"),
    ("user", "utilisateur"),
    ("calendar", "calendrier", "agenda"),
    ("event", "evenement"),
    ("meeting", "reunion"),
    ("image", "picture", "photo"),
    # Version control (git) and documents (pdf, rag).
    ("log", "history", "historique", "journal"),
    ("recent", "latest", "last", "newest", "dernier", "derniere", "recents"),
    ("status", "statut", "etat", "uncommitted", "pending", "dirty"),
    ("diff", "difference", "differences", "compare", "comparer"),
    ("branch", "branche"),
    ("checkout", "switch", "basculer", "bascule"),
    ("repository", "repo", "depot"),
    ("stage", "staging", "stager"),
    ("extract", "extraire", "extrais", "extrait", "pull"),
    ("index", "indexe", "ingest", "ingerer", "vectorise", "embed"),
    ("knowledge", "connaissance", "kb", "rag", "handbook", "documentation", "passage"),
    ("page", "webpage"),
)

# Multi-word expressions, matched on the folded query before it is cut into words.
PHRASES: dict[str, str] = {
    "base de donnees": "database",
    "base donnees": "database",
    "se souvenir": "remember",
    "se rappeler": "recall",
    "ligne de commande": "command line",
    "mettre a jour": "update",
    "look up": "lookup",
    "look for": "search",
    "keep in mind": "remember",
    "how big": "size",
    "search text": "grep search text",
    "get rid of": "delete",
    "don t forget": "remember",
    "n oublie pas": "remember",
    "last modified": "modification time",
    "staging area": "stage",
    "go to": "switch",
    "base de connaissances": "knowledge",
    "base connaissances": "knowledge",
    "knowledge base": "knowledge",
    "knowledge index": "knowledge",
    "how many pages": "page count",
    "where is": "find",
    "where are": "find",
    "ou est": "find",
    "ou se trouve": "find",
    "what is in": "list",
    "what s in": "list",
    "directory contents": "list directory",
    "folder contents": "list directory",
    "contenu du dossier": "list directory",
    "contenu du repertoire": "list directory",
}

STOPWORDS: frozenset[str] = frozenset(
    # English
    [
        "a", "an", "the", "of", "to", "in", "into", "on", "onto", "for", "from", "with", "and", "or", "by",
        "at", "as", "is", "are", "be", "been", "it", "its", "this", "that", "these", "those", "my", "me",
        "i", "you", "your", "we", "our", "please", "some", "any", "can", "could", "would", "should", "how",
        "what", "which", "do", "does", "via", "then", "than", "there", "here", "just", "where", "when",
        "who", "why", "did", "was", "were", "has", "have", "had", "about", "all", "let", "want", "need",
        "like",
    ]
    # French (accents folded)
    + [
        "un", "une", "le", "la", "les", "l", "de", "des", "du", "d", "au", "aux", "et", "ou", "en", "dans",
        "sur", "pour", "par", "avec", "ce", "cet", "cette", "ces", "mon", "ma", "mes", "ton", "ta", "tes",
        "son", "sa", "ses", "je", "tu", "il", "elle", "nous", "vous", "ils", "elles", "qui", "que", "qu",
        "quoi", "est", "sont", "moi", "se", "s", "y", "t", "m", "veux", "voudrais", "peux", "faut",
    ]
)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SPLIT = re.compile(r"[\W_]+")


# -- text ---------------------------------------------------------------------------------------


def fold(text: str) -> str:
    """camelCase split, accents stripped, case-folded."""
    text = _CAMEL.sub(" ", text)
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()


def words(text: str) -> list[str]:
    """The folded words of ``text``, split on anything that is not a letter or digit (``_ . -`` too)."""
    return [w for w in _SPLIT.split(fold(text)) if w]


def _undouble(word: str) -> str:
    if len(word) >= 3 and word[-1] == word[-2] and word[-1] not in "lsz" and word[-1].isalpha():
        return word[:-1]
    return word


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light, symmetric stemmer: both the tools and the queries go through it, so it only has to
    map the forms of one word to one key (read/reads/reading, delete/deleted/deleting), not to a
    real root."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "ches", "shes", "xes", "zes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if word.endswith("ing") and len(word) >= 6:
        word = _undouble(word[:-3])
    elif word.endswith("ied") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ed") and len(word) >= 5:
        word = _undouble(word[:-2])
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def _build_synonyms(groups: Iterable[tuple[str, ...]]) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """stem → stems of every other member of its groups; stem → canonical English word."""
    related: dict[str, set[str]] = {}
    canonical: dict[str, str] = {}
    for group in groups:
        stems = [stem(w) for w in group]
        for s in stems:
            related.setdefault(s, set()).update(x for x in stems if x != s)
            canonical.setdefault(s, group[0])
    return {k: frozenset(v) for k, v in related.items()}, canonical


_SYNONYMS, _CANONICAL = _build_synonyms(SYNONYM_GROUPS)


@dataclass(frozen=True)
class _QueryTerm:
    word: str
    stem: str
    synonyms: frozenset[str]


def _query_words(query: str) -> list[str]:
    folded = " " + " ".join(words(query)) + " "
    for phrase, replacement in PHRASES.items():
        folded = folded.replace(f" {phrase} ", f" {replacement} ")
    tokens = folded.split()
    content = [t for t in tokens if t not in STOPWORDS]
    return content or tokens


def _query_terms(query: str) -> list[_QueryTerm]:
    seen: set[str] = set()
    terms: list[_QueryTerm] = []
    for word in _query_words(query):
        s = stem(word)
        if s in seen:
            continue
        seen.add(s)
        terms.append(_QueryTerm(word=word, stem=s, synonyms=_SYNONYMS.get(s, frozenset())))
    return terms


# -- documents ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolDoc:
    """What search knows about one tool."""

    name: str  # "module.action"
    module: str
    action: str
    description: str
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    category_description: str = ""

    def embedding_text(self) -> str:
        action = " ".join(words(self.action))
        parts = [f"{action} ({' '.join(words(self.module))}): {self.description}"]
        if self.aliases:
            parts.append("Also: " + ", ".join(self.aliases) + ".")
        if self.tags:
            parts.append("Tags: " + ", ".join(self.tags) + ".")
        return " ".join(parts)


def _doc_terms(doc: ToolDoc, raw: dict[str, str]) -> dict[str, float]:
    """The tool's stems with the weight of the best field each came from; also records every
    folded word (→ its stem) in ``raw`` for prefix lookups."""
    weights: dict[str, float] = {}

    def add(text: str, weight: float, *, searchable: bool = True) -> None:
        for word in words(text):
            if word in STOPWORDS:
                continue
            s = stem(word)
            if searchable and word not in raw:
                raw[word] = s
            if weights.get(s, 0.0) < weight:
                weights[s] = weight

    # The category text is shared by every tool of a module: it may lift a tool a little but
    # its words are too generic to complete a prefix.
    add(doc.category_description, _W_CATEGORY, searchable=False)
    add(doc.description, _W_DESCRIPTION)
    for tag in doc.tags:
        add(tag, _W_TAG)
    add(doc.module, _W_MODULE)
    for alias in doc.aliases:
        add(alias, _W_ALIAS)
    add(doc.action, _W_ACTION)
    return weights


@functools.lru_cache(maxsize=1)
def default_embedder() -> Embedder | None:
    """The shipped static model, loaded once per process; None (and a warning) when it cannot be.

    ``$DIGITORN_EMBEDDING_MODEL`` may point at another model file, or say ``off``.
    """
    path = configured_model_path()
    if path is None:
        log.info("semantic tool search is off (%s=off): keyword search only", MODEL_ENV_VAR)
        return None
    try:
        return load_embedder(path)
    except EmbeddingModelError as exc:
        log.warning("tool search falls back to keyword-only: %s", exc)
        return None


_DEFAULT_EMBEDDER = object()


class ToolSearchIndex:
    """An immutable search index over a set of tools; build it once, search it from any thread."""

    mode: str  # "hybrid" when an embedding model is in use, else "keyword"

    def __init__(
        self,
        docs: tuple[ToolDoc, ...],
        *,
        postings: dict[str, tuple[np.ndarray, np.ndarray]],
        idf: dict[str, float],
        raw_words: list[tuple[str, str]],
        action_postings: dict[str, np.ndarray],
        action_sizes: np.ndarray,
        exact: dict[str, list[int]],
        embedder: Embedder | None,
        vectors: np.ndarray | None,
        fusion: str,
    ):
        self.docs = docs
        self._postings = postings
        self._idf = idf
        self._max_idf = max(idf.values(), default=1.0)
        # Sorted (folded word, its stem) pairs, for prefix lookups with bisect.
        self._raw_words = raw_words
        self._raw_keys = [w for w, _ in raw_words]
        self._action_postings = action_postings
        self._action_sizes = action_sizes
        self._exact = exact
        # Position of each tool in name order: the tie-breaker that keeps results stable.
        self._name_rank = np.argsort(np.argsort(np.array([d.name for d in docs], dtype=object), kind="stable"))
        self.embedder = embedder
        self._vectors = vectors
        self.fusion = fusion
        self.mode = "hybrid" if embedder is not None else "keyword"

    def __len__(self) -> int:
        return len(self.docs)

    @classmethod
    def build(
        cls,
        docs: Sequence[ToolDoc],
        *,
        embedder: Embedder | None | object = _DEFAULT_EMBEDDER,
        fusion: str = "weighted",
    ) -> ToolSearchIndex:
        """Index ``docs``. ``embedder`` defaults to :func:`default_embedder`; pass None for keyword-only.

        ``fusion`` is "weighted" (default) or "rrf" (reciprocal-rank fusion, kept for the benchmark).
        """
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
        if embedder is _DEFAULT_EMBEDDER:
            embedder = default_embedder()
        docs = tuple(docs)
        seen: set[str] = set()
        for i, doc in enumerate(docs):
            if not isinstance(doc, ToolDoc):
                raise TypeError(f"docs[{i}] is a {type(doc).__name__}, not a ToolDoc")
            if doc.name in seen:
                raise ValueError(f"docs[{i}]: tool name {doc.name!r} appears twice")
            seen.add(doc.name)

        per_term: dict[str, tuple[list[int], list[float]]] = {}
        raw: dict[str, str] = {}
        per_action_stem: dict[str, list[int]] = {}
        action_sizes = np.zeros(len(docs), dtype=np.float64)
        exact: dict[str, list[int]] = {}
        for i, doc in enumerate(docs):
            for term, weight in _doc_terms(doc, raw).items():
                ids, ws = per_term.setdefault(term, ([], []))
                ids.append(i)
                ws.append(weight)
            action_words = words(doc.action)
            action_stems = {stem(w) for w in action_words if w not in STOPWORDS}
            for s in action_stems:
                per_action_stem.setdefault(s, []).append(i)
            action_sizes[i] = len(action_stems)
            for key in {" ".join(words(doc.name)), " ".join(action_words)}:
                exact.setdefault(key, []).append(i)

        n = len(docs)
        postings = {
            term: (np.asarray(ids, dtype=np.intp), np.asarray(ws, dtype=np.float64))
            for term, (ids, ws) in per_term.items()
        }
        idf = {
            term: math.log(1.0 + (n - len(ids) + 0.5) / (len(ids) + 0.5)) for term, (ids, _) in per_term.items()
        }
        action_postings = {s: np.asarray(ids, dtype=np.intp) for s, ids in per_action_stem.items()}

        vectors = None
        if embedder is not None and docs:
            vectors = np.asarray(embedder.embed([doc.embedding_text() for doc in docs]), dtype=np.float32)
        return cls(
            docs,
            postings=postings,
            idf=idf,
            raw_words=sorted(raw.items()),
            action_postings=action_postings,
            action_sizes=action_sizes,
            exact=exact,
            embedder=embedder,
            vectors=vectors,
            fusion=fusion,
        )

    # -- scoring --------------------------------------------------------------------------------

    def _prefix_terms(self, prefix: str) -> dict[str, float]:
        """Stems of the indexed words that start with ``prefix``, with a factor by how much of the
        word the prefix covers."""
        found: dict[str, float] = {}
        start = bisect.bisect_left(self._raw_keys, prefix)
        for word, word_stem in self._raw_words[start : start + _PREFIX_MAX_TERMS]:
            if not word.startswith(prefix):
                break
            if word == prefix:
                continue
            factor = 0.5 + 0.35 * len(prefix) / len(word)
            if found.get(word_stem, 0.0) < factor:
                found[word_stem] = factor
        return found

    def keyword_scores(self, query: str) -> np.ndarray:
        """The keyword score of every tool for ``query``, 0..1 (index order)."""
        return self._keyword(query, _query_terms(query))

    def _keyword(self, query: str, terms: list[_QueryTerm]) -> np.ndarray:
        n = len(self.docs)
        scores = np.zeros(n, dtype=np.float64)
        if not terms or not n:
            return scores
        total = 0.0
        covered: set[str] = set()
        for position, term in enumerate(terms):
            best = np.zeros(n, dtype=np.float64)
            candidates: dict[str, float] = {}
            if term.stem in self._postings:
                candidates[term.stem] = 1.0
            for synonym in term.synonyms:
                if synonym in self._postings and candidates.get(synonym, 0.0) < _SYNONYM_FACTOR:
                    candidates[synonym] = _SYNONYM_FACTOR
            # Only the last word may be unfinished (a query is typed left to right): a whole word
            # earlier on ("know" in "what do you know about…") is not the start of "knowledge".
            if len(term.word) >= _PREFIX_MIN_CHARS and position == len(terms) - 1:
                for prefixed, factor in self._prefix_terms(term.word).items():
                    if prefixed in self._postings and candidates.get(prefixed, 0.0) < factor:
                        candidates[prefixed] = factor
            for cand, factor in candidates.items():
                ids, ws = self._postings[cand]
                # ids are unique within one posting list, so plain fancy indexing is safe here.
                best[ids] = np.maximum(best[ids], ws * factor)
            # A query word no tool uses still counts (less than a rare word would): a query
            # half made of unknown words is not a full match for anything.
            weight = max((self._idf[c] for c in candidates), default=self._max_idf * _UNKNOWN_WORD_SHARE)
            scores += weight * best
            total += weight
            covered.update(candidates)
        scores /= total

        # How much of each tool's action name the query covers: "list tables" fits
        # database.list_tables better than a tool whose action merely contains "list".
        fit = np.zeros(n, dtype=np.float64)
        for s in covered:
            ids = self._action_postings.get(s)
            if ids is not None:
                fit[ids] += 1.0
        np.divide(fit, self._action_sizes, out=fit, where=self._action_sizes > 0)
        scores = 0.9 * scores + 0.1 * fit * (scores > 0)

        for i in self._exact.get(" ".join(words(query)), ()):
            scores[i] = 1.0
        return np.clip(scores, 0.0, 1.0)

    def semantic_scores(self, query: str) -> np.ndarray | None:
        """Cosine similarity of every tool to ``query`` rescaled to 0..1; None in keyword mode."""
        return self._semantic(query, _query_terms(query))

    def _semantic(self, query: str, terms: list[_QueryTerm]) -> np.ndarray | None:
        if self.embedder is None or self._vectors is None:
            return None
        expansions: list[str] = []
        for term in terms:
            english = _CANONICAL.get(term.stem)
            if english and english != term.word and english not in expansions:
                expansions.append(english)
        text = query if not expansions else f"{query} ({' '.join(expansions)})"
        q = np.asarray(self.embedder.embed([text]), dtype=np.float32)[0]
        cos = self._vectors @ q
        return np.clip((cos - _COS_FLOOR) / (_COS_CEIL - _COS_FLOOR), 0.0, 1.0).astype(np.float64)

    def search(self, query: str, max_results: int = 10) -> list[tuple[ToolDoc, float]]:
        """The tools that best answer ``query``, best first, with a relevance in 0..1.

        Raises ValueError (callers answer 400) for an empty or over-long query or a
        ``max_results`` below 1.
        """
        if not isinstance(query, str):
            raise ValueError(f"query must be text, not {type(query).__name__}")
        if not query.strip():
            raise ValueError("query must not be empty: say what the tool should do, e.g. 'read file'")
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}")
        if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
            raise ValueError(f"max_results must be a whole number of at least 1, not {max_results!r}")
        if not self.docs:
            return []

        terms = _query_terms(query)
        keyword = self._keyword(query, terms)
        semantic = self._semantic(query, terms)
        if semantic is None:
            relevance = keyword
            eligible = keyword > 0
        elif self.fusion == "rrf":
            relevance = self._rrf(keyword, semantic)
            eligible = (keyword > 0) | (semantic > 0)
        else:
            relevance = _KW_WEIGHT * keyword + (1.0 - _KW_WEIGHT) * semantic
            eligible = (keyword > 0) | (semantic > 0)
        # Rounded first so that the order agrees with the scores callers see.
        relevance = np.round(relevance, 4)
        candidates = np.flatnonzero(eligible & (relevance >= _MIN_RELEVANCE))
        if candidates.size == 0:
            return []
        # Best first; ties by name so that results are stable.
        order = candidates[np.lexsort((self._name_rank[candidates], -relevance[candidates]))]
        return [(self.docs[i], float(relevance[i])) for i in order[:max_results]]

    @staticmethod
    def _rrf(keyword: np.ndarray, semantic: np.ndarray) -> np.ndarray:
        def ranks(scores: np.ndarray) -> np.ndarray:
            order = np.argsort(-scores, kind="stable")
            r = np.empty_like(order)
            r[order] = np.arange(1, len(scores) + 1)
            return np.where(scores > 0, 1.0 / (_RRF_K + r), 0.0)

        return (ranks(keyword) + ranks(semantic)) / (2.0 / (_RRF_K + 1))


__all__ = [
    "FUSIONS",
    "MAX_QUERY_CHARS",
    "PHRASES",
    "STOPWORDS",
    "SYNONYM_GROUPS",
    "Embedder",
    "ToolDoc",
    "ToolSearchIndex",
    "default_embedder",
    "fold",
    "stem",
    "words",
]
