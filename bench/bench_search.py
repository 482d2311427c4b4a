"""Tool search benchmark: build time, query latency, recall@5, model load time and memory.

Run from the project root::

    .venv/bin/python bench/bench_search.py            # the shipped model
    .venv/bin/python bench/bench_search.py --model /path/to/other.npz

It builds an index of 1,000 synthetic tools, times index builds and 600 queries in hybrid and
keyword modes, and measures recall@5 and MRR of the 86-query set below (51 direct queries, 35
paraphrases; English and French) for weighted-sum fusion, reciprocal-rank fusion and keyword-only
search on: 22 stand-in built-in tools, the same hidden among the 1,000 synthetic ones, and the
project's real built-in modules from ``tooling.registry`` (skip with ``--no-project-modules``).
Targets: build < 1 s and p50 < 5 ms per query on 1,000 tools (2-core machine).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tooling.embeddings import MODEL_PATH, load_embedder  # noqa: E402
from tooling.search import ToolDoc, ToolSearchIndex  # noqa: E402


def _doc(name: str, description: str, aliases: tuple[str, ...] = (), tags: tuple[str, ...] = ()) -> ToolDoc:
    module, action = name.split(".", 1)
    return ToolDoc(
        name=name,
        module=module,
        action=action,
        description=description,
        aliases=aliases,
        tags=tags,
        category_description=CATEGORIES[module],
    )


CATEGORIES = {
    "filesystem": "Files and folders inside the app's workspace.",
    "shell": "Shell commands run in the workspace with a timeout.",
    "database": "SQL databases the app is connected to.",
    "http": "HTTP requests to web servers and APIs.",
    "memory": "The agent's long-term memory of facts.",
}

BUILTIN_DOCS: list[ToolDoc] = [
    _doc("filesystem.read", "Read the content of a text file in the workspace, optionally a range of lines.",
         ("cat", "open file", "view file"), ("files", "read")),
    _doc("filesystem.write", "Write text to a file, creating it or overwriting what is there.",
         ("save file", "create file"), ("files", "write")),
    _doc("filesystem.edit", "Edit a file by replacing an exact snippet of its text with another.",
         ("patch", "modify file", "replace text"), ("files", "write")),
    _doc("filesystem.ls", "List the entries of a directory with their type and size.",
         ("list directory", "dir"), ("files", "read")),
    _doc("filesystem.find", "Find files whose names match a glob pattern under a directory.",
         ("locate", "search files by name"), ("files", "search")),
    _doc("filesystem.grep", "Search the contents of files for lines matching a regular expression.",
         ("search text", "find in files"), ("files", "search")),
    _doc("filesystem.mkdir", "Create a directory, and its parents when missing.",
         ("make directory", "new folder"), ("files", "write")),
    _doc("filesystem.move", "Move or rename a file or directory.",
         ("mv", "rename"), ("files", "write")),
    _doc("filesystem.copy", "Copy a file or a directory tree to a new place.",
         ("cp", "duplicate"), ("files", "write")),
    _doc("filesystem.delete", "Delete a file or an empty directory. This cannot be undone.",
         ("rm", "remove file"), ("files", "write", "destructive")),
    _doc("filesystem.stat", "Get metadata of a path: size, type, permissions, modification time.",
         ("file info", "exists"), ("files", "read")),
    _doc("shell.run", "Run a shell command in the workspace and return its exit code, stdout and stderr.",
         ("exec", "bash", "execute command"), ("process", "execute")),
    _doc("database.query", "Run a read-only SQL query (SELECT) and return the rows as a list of records.",
         ("select", "sql"), ("sql", "read")),
    _doc("database.execute", "Execute a SQL statement that changes data (INSERT, UPDATE, DELETE, DDL).",
         ("insert", "update rows"), ("sql", "write")),
    _doc("database.list_tables", "List the tables of the database.", ("show tables",), ("sql", "schema")),
    _doc("database.describe", "Describe a table: its columns, their types, keys and indexes.",
         ("schema", "columns"), ("sql", "schema")),
    _doc("http.get", "Fetch a URL with an HTTP GET request and return the status, headers and body.",
         ("download", "fetch url"), ("web", "read")),
    _doc("http.post", "Send data to a URL with an HTTP POST request (JSON or form body).",
         ("submit", "send json"), ("web", "write")),
    _doc("http.request", "Make an HTTP request with any method, headers and body.",
         ("put", "patch", "delete request"), ("web",)),
    _doc("memory.remember", "Store a fact in long-term memory so it can be recalled in later sessions.",
         ("save fact", "memorize"), ("memory", "write")),
    _doc("memory.recall", "Recall the stored facts most relevant to a question.",
         ("retrieve memory", "what do you know"), ("memory", "read")),
    _doc("memory.forget", "Forget a stored fact, removing it from long-term memory.",
         ("erase memory",), ("memory", "write")),
]

# (query, tools that are a right answer). Three answers were widened when the workspace and web
# modules arrived, because the new tool does exactly what was asked: workspace.grep is a grep as much
# as filesystem.grep is (same action, same job, nothing in the one-word query prefers either), and
# web.fetch exists to download a web page (http.get returns the raw body). ``--strict`` scores
# with the original single answers.
QUERIES: list[tuple[str, set[str]]] = [
    ("read file", {"filesystem.read"}),
    ("read a file", {"filesystem.read"}),
    ("show me the contents of config.yaml", {"filesystem.read"}),
    ("open a text file", {"filesystem.read"}),
    ("lire un fichier", {"filesystem.read"}),
    ("rea", {"filesystem.read"}),
    ("write to a file", {"filesystem.write"}),
    ("save this text into notes.txt", {"filesystem.write"}),
    ("écrire dans un fichier", {"filesystem.write"}),
    ("change one line in a file", {"filesystem.edit"}),
    ("replace a string in the source code", {"filesystem.edit"}),
    ("list files in a folder", {"filesystem.ls"}),
    ("what is in this directory", {"filesystem.ls"}),
    ("lister le dossier", {"filesystem.ls"}),
    ("find all python files", {"filesystem.find"}),
    ("locate a file by name", {"filesystem.find"}),
    ("search for TODO in the code", {"filesystem.grep"}),
    ("grep", {"filesystem.grep", "workspace.grep"}),
    ("chercher un texte dans les fichiers", {"filesystem.grep"}),
    ("create a folder", {"filesystem.mkdir"}),
    ("créer un répertoire", {"filesystem.mkdir"}),
    ("rename a file", {"filesystem.move"}),
    ("déplacer un fichier", {"filesystem.move"}),
    ("duplicate a directory", {"filesystem.copy"}),
    ("copy file", {"filesystem.copy"}),
    ("remove a file", {"filesystem.delete"}),
    ("supprimer un fichier", {"filesystem.delete"}),
    ("how big is this file", {"filesystem.stat"}),
    ("does the path exist", {"filesystem.stat"}),
    ("run a command", {"shell.run"}),
    ("execute ls -la in the terminal", {"shell.run"}),
    ("exécuter une commande", {"shell.run"}),
    ("launch a bash script", {"shell.run"}),
    ("SELECT rows from a table", {"database.query"}),
    ("query the database", {"database.query"}),
    ("requête SQL sur la base de données", {"database.query", "database.execute"}),
    ("insert a row", {"database.execute"}),
    ("update records in the db", {"database.execute"}),
    ("which tables are there", {"database.list_tables"}),
    ("show the columns of the users table", {"database.describe"}),
    ("table schema", {"database.describe"}),
    ("download a web page", {"http.get", "web.fetch"}),
    ("fetch https://example.com", {"http.get"}),
    ("télécharger une page", {"http.get", "web.fetch"}),
    ("send JSON to an API", {"http.post"}),
    ("call an API with a PUT request", {"http.request"}),
    ("remember that the user prefers dark mode", {"memory.remember"}),
    ("se souvenir d'une information", {"memory.remember"}),
    ("what do you know about the project", {"memory.recall"}),
    ("forget this fact", {"memory.forget"}),
    ("oublier", {"memory.forget"}),
    # Paraphrases with little word overlap, as an agent or a person would put them.
    ("print the first 20 lines of main.py", {"filesystem.read"}),
    ("overwrite the config with new settings", {"filesystem.write"}),
    ("append a paragraph to the README", {"filesystem.write", "filesystem.edit"}),
    ("fix a typo in the docs", {"filesystem.edit"}),
    ("show directory contents", {"filesystem.ls"}),
    ("where is the settings file", {"filesystem.find"}),
    ("look for the word password in all files", {"filesystem.grep"}),
    ("make a new subfolder called build", {"filesystem.mkdir"}),
    ("move the log into the archive folder", {"filesystem.move"}),
    ("make a backup copy of report.pdf", {"filesystem.copy"}),
    ("erase the temporary files", {"filesystem.delete"}),
    ("when was this file last modified", {"filesystem.stat"}),
    ("check the permissions of a script", {"filesystem.stat"}),
    ("install a package with pip", {"shell.run"}),
    ("start the test suite", {"shell.run"}),
    ("count the users in the database", {"database.query"}),
    ("add a new customer to the customers table", {"database.execute"}),
    ("drop the old table", {"database.execute"}),
    ("what are the fields of the orders table", {"database.describe"}),
    ("call the weather API", {"http.get", "http.request"}),
    ("submit a form to a website", {"http.post"}),
    ("make a DELETE request to the REST endpoint", {"http.request"}),
    ("keep in mind that the deadline is Friday", {"memory.remember"}),
    ("note for later: the API key rotates monthly", {"memory.remember"}),
    ("what did I tell you about the deadline", {"memory.recall"}),
    ("look up my saved notes about the client", {"memory.recall"}),
    ("delete what you remember about my address", {"memory.forget"}),
    ("afficher le contenu du fichier", {"filesystem.read"}),
    ("mettre à jour une ligne dans la table", {"database.execute"}),
    ("envoyer des données à une API", {"http.post"}),
    ("oublie ce que je t'ai dit", {"memory.forget"}),
    ("quelles tables existent", {"database.list_tables"}),
    ("renommer le dossier", {"filesystem.move"}),
    ("copier un fichier", {"filesystem.copy"}),
    ("taille du fichier", {"filesystem.stat"}),
]

# The answers the three widened queries had before the workspace and web modules (``--strict``).
STRICT_ANSWERS: dict[str, set[str]] = {
    "grep": {"filesystem.grep"},
    "download a web page": {"http.get"},
    "télécharger une page": {"http.get"},
}

# -- synthetic tools --------------------------------------------------------------------------------

SERVICES = [
    ("crm", "customer relationship management", ["contact", "lead", "deal", "account", "note"]),
    ("billing", "invoices and payments", ["invoice", "payment", "refund", "subscription", "customer"]),
    ("calendar", "calendars and meetings", ["event", "meeting", "calendar", "attendee", "reminder"]),
    ("mail", "electronic mail", ["email", "draft", "thread", "label", "attachment"]),
    ("chat", "team chat", ["message", "channel", "thread", "reaction", "user"]),
    ("github", "source code hosting", ["repository", "issue", "pull request", "branch", "release"]),
    ("tickets", "issue tracking", ["ticket", "sprint", "comment", "board", "epic"]),
    ("storage", "object storage buckets", ["bucket", "object", "upload", "presigned url", "lifecycle rule"]),
    ("k8s", "container orchestration", ["pod", "deployment", "service", "namespace", "config map"]),
    ("docker", "containers", ["container", "image", "volume", "network", "log"]),
    ("weather", "weather forecasts", ["forecast", "alert", "station", "observation", "radar image"]),
    ("maps", "maps and places", ["place", "route", "geocode", "distance", "map tile"]),
    ("translate", "machine translation", ["text", "document", "glossary", "language", "detection"]),
    ("pdf", "PDF documents", ["page", "form field", "annotation", "signature", "outline"]),
    ("images", "image processing", ["thumbnail", "crop", "filter", "caption", "metadata"]),
    ("sheets", "spreadsheets", ["sheet", "cell", "range", "chart", "formula"]),
    ("docs", "collaborative documents", ["document", "paragraph", "comment", "revision", "template"]),
    ("analytics", "product analytics", ["report", "metric", "dashboard", "funnel", "cohort"]),
    ("search_engine", "full-text search engine", ["index", "query", "synonym", "document", "facet"]),
    ("vector_db", "vector database", ["collection", "vector", "embedding", "query", "payload"]),
    ("dns", "domain names", ["record", "zone", "domain", "certificate", "nameserver"]),
    ("monitoring", "metrics and alerting", ["alert", "metric", "dashboard", "incident", "silence"]),
    ("payments", "card payments", ["charge", "card", "payout", "dispute", "balance"]),
    ("shop", "online store", ["product", "order", "cart", "inventory", "discount"]),
    ("hr", "human resources", ["employee", "leave request", "payslip", "team", "review"]),
    ("accounting", "bookkeeping", ["ledger", "journal entry", "tax rate", "budget", "expense"]),
    ("social", "social networks", ["post", "follower", "mention", "scheduled post", "profile"]),
    ("sms", "text messages", ["sms", "phone number", "delivery report", "opt out", "sender id"]),
    ("video", "video hosting", ["video", "playlist", "subtitle", "stream", "chapter"]),
    ("music", "music streaming", ["track", "album", "playlist", "artist", "queue"]),
    ("iot", "connected devices", ["device", "sensor reading", "firmware", "command", "telemetry"]),
    ("cms", "content management", ["article", "page", "media", "category", "menu"]),
    ("forms", "online forms", ["form", "response", "question", "webhook", "export"]),
    ("auth", "identity and access", ["user", "role", "session", "api key", "group"]),
    ("backup", "backups", ["snapshot", "backup job", "restore point", "policy", "archive"]),
    ("ci", "continuous integration", ["pipeline", "job", "artifact", "runner", "build log"]),
    ("queue", "message queues", ["queue", "message", "dead letter", "consumer", "topic"]),
    ("cache", "key-value cache", ["key", "value", "ttl", "namespace", "counter"]),
    ("notes", "personal notes", ["note", "notebook", "tag", "checklist", "reminder"]),
    ("travel", "travel booking", ["flight", "hotel", "booking", "itinerary", "fare"]),
]

VERBS = [
    ("get", "Get one {obj} by its id from {svc}, with all its fields."),
    ("list", "List the {objs} in {svc}, newest first, with paging."),
    ("create", "Create a new {obj} in {svc} from the given fields."),
    ("update", "Update fields of an existing {obj} in {svc}."),
    ("delete", "Delete a {obj} from {svc}; this cannot be undone."),
    ("search", "Search {objs} in {svc} by keywords and filters."),
    ("export", "Export {objs} from {svc} as CSV or JSON."),
    ("count", "Count the {objs} in {svc} that match a filter."),
    ("archive", "Archive a {obj} in {svc} so it no longer shows in lists."),
    ("sync", "Synchronise {objs} between {svc} and an external system."),
]


def synthetic_docs(count: int, seed: int = 7) -> list[ToolDoc]:
    rng = random.Random(seed)
    docs: list[ToolDoc] = []
    combos = [(svc, obj, verb) for svc in SERVICES for obj in svc[2] for verb in VERBS]
    rng.shuffle(combos)
    for (module, svc_desc, _), obj, (verb, template) in combos[:count]:
        obj_id = obj.replace(" ", "_")
        objs = obj + ("es" if obj.endswith(("s", "x", "ch")) else "s")
        docs.append(
            ToolDoc(
                name=f"{module}.{verb}_{obj_id}",
                module=module,
                action=f"{verb}_{obj_id}",
                description=template.format(obj=obj, objs=objs, svc=svc_desc),
                aliases=(f"{verb} {objs}",) if rng.random() < 0.5 else (),
                tags=(module, verb),
                category_description=f"Tools for {svc_desc}.",
            )
        )
    if len(docs) < count:
        raise SystemExit(f"only {len(docs)} synthetic combinations; add services or verbs")
    return docs


# Queries for the modules of issue #13 (pdf, git, workspace, web; mcp's own actions are hidden from
# search and its servers' tools depend on the servers); English and French. Where a
# request is served equally by an older module (reading a file: filesystem.read or workspace.read)
# both are accepted.
MODULE_QUERIES: list[tuple[str, set[str]]] = [
    ("extract the text of a PDF", {"pdf.extract_text"}),
    ("read report.pdf", {"pdf.extract_text"}),
    ("lire un document pdf", {"pdf.extract_text"}),
    ("who is the author of this pdf", {"pdf.metadata"}),
    ("how many pages does the pdf have", {"pdf.metadata"}),
    ("find the word invoice inside a pdf", {"pdf.search"}),
    ("git status", {"git.status"}),
    ("which files did I change", {"git.status", "git.diff"}),
    ("show the diff of my changes", {"git.diff"}),
    ("commit the changes with a message", {"git.commit"}),
    ("valider les modifications git", {"git.commit"}),
    ("show the commit history", {"git.log"}),
    ("historique des commits", {"git.log"}),
    ("stage files for commit", {"git.add"}),
    ("create a new branch", {"git.branch"}),
    ("switch to the develop branch", {"git.checkout"}),
    ("initialise a git repository", {"git.init"}),
    ("what did the last commit change", {"git.show"}),
    ("search the web for the latest news", {"web.search"}),
    ("rechercher sur internet", {"web.search"}),
    ("google the weather in Paris", {"web.search"}),
    ("read the article at this URL as text", {"web.fetch", "http.get"}),
    ("scrape a webpage", {"web.fetch"}),
    ("lire une page web", {"web.fetch", "http.get"}),
    ("write the plan into the workspace", {"workspace.write", "filesystem.write"}),
    ("delete a file from the workspace", {"workspace.delete", "filesystem.delete"}),
]

# Paraphrases over every module (issue #13 item 6): requests as a user or an agent words them, with
# few of the tool's own words, half in French (as the original's aliases are). Written before the
# scorer was tuned on them. Where two modules serve a request equally (filesystem.read and
# workspace.read) both are right; the target is recall@1 >= 0.9.
PARAPHRASE_QUERIES: list[tuple[str, set[str]]] = [
    # filesystem / workspace
    ("show me what config.yaml contains", {"filesystem.read", "workspace.read"}),
    ("affiche-moi le contenu de notes.txt", {"filesystem.read", "workspace.read"}),
    ("put this paragraph into summary.md", {"filesystem.write", "workspace.write"}),
    ("enregistre ce texte dans un nouveau fichier", {"filesystem.write", "workspace.write"}),
    ("swap the old function name for the new one in utils.py", {"filesystem.edit", "workspace.edit"}),
    ("remplace une chaîne dans un fichier", {"filesystem.edit", "workspace.edit"}),
    ("what files are in the src folder", {"filesystem.ls", "workspace.glob"}),
    ("liste le contenu du répertoire", {"filesystem.ls"}),
    ("find every markdown file in the project", {"filesystem.find", "workspace.glob"}),
    ("trouve les fichiers qui s'appellent test_*.py", {"filesystem.find", "workspace.glob"}),
    ("which files mention the word deprecated", {"filesystem.grep", "workspace.grep"}),
    ("cherche le mot TODO dans le code", {"filesystem.grep", "workspace.grep"}),
    ("get rid of the temp file", {"filesystem.delete", "workspace.delete"}),
    ("supprime ce fichier", {"filesystem.delete", "workspace.delete"}),
    ("make a folder named assets", {"filesystem.mkdir"}),
    ("crée un dossier pour les images", {"filesystem.mkdir"}),
    ("is the log file bigger than a megabyte", {"filesystem.stat"}),
    # shell
    ("run the unit tests with pytest", {"shell.run"}),
    ("lance le script de build dans le terminal", {"shell.run"}),
    # database
    ("how many orders were placed yesterday according to the db", {"database.query"}),
    ("insère une nouvelle ligne dans la table clients", {"database.execute"}),
    ("list every table in the sqlite database", {"database.list_tables"}),
    ("quelles colonnes a la table users", {"database.describe"}),
    # http / web
    ("post this JSON payload to the webhook", {"http.post"}),
    ("envoie une requête PUT à l'API", {"http.request"}),
    ("look this topic up on the internet", {"web.search"}),
    ("cherche sur le web les horaires du musée", {"web.search"}),
    ("get the readable text of this article url", {"web.fetch"}),
    ("récupère le contenu de cette page web", {"web.fetch"}),
    # memory
    ("don't forget that my favourite colour is green", {"memory.remember"}),
    ("retiens que la réunion est jeudi", {"memory.remember"}),
    ("what did I ask you to remember", {"memory.recall"}),
    ("efface ce que tu as mémorisé sur moi", {"memory.forget"}),
    # pdf
    ("pull the text out of invoice.pdf", {"pdf.extract_text"}),
    ("extrais le texte de ce document pdf", {"pdf.extract_text"}),
    ("how many pages is the contract pdf", {"pdf.metadata"}),
    ("dans quel page du pdf apparaît le mot garantie", {"pdf.search"}),
    # git
    ("what's uncommitted in the repo", {"git.status", "git.diff"}),
    ("montre les différences depuis le dernier commit", {"git.diff"}),
    ("save my staged work with the message fix login", {"git.commit"}),
    ("show the last ten commits", {"git.log"}),
    ("affiche l'historique du dépôt", {"git.log"}),
    ("go to the release branch", {"git.checkout"}),
    ("crée une nouvelle branche feature", {"git.branch"}),
    ("add the modified files to the staging area", {"git.add"}),
    # rag
    ("index the docs folder so I can ask questions about it", {"rag.ingest_directory"}),
    ("indexe les documents du dossier pour la recherche sémantique", {"rag.ingest_directory"}),
    ("which passage of our handbook talks about parental leave", {"rag.query", "rag.search"}),
    ("interroge la base de connaissances sur la politique de congés", {"rag.query", "rag.search"}),
    ("add this text to the knowledge base", {"rag.ingest"}),
    ("take report.md out of the knowledge index", {"rag.remove"}),
    ("which knowledge bases exist", {"rag.list_knowledge_bases"}),
]

SYNTHETIC_QUERIES = [
    "list invoices", "delete a contact", "create meeting", "search tickets by keyword", "export orders as csv",
    "get pod", "archive the playlist", "count alerts", "sync employees", "update a dns record",
    "créer une facture", "supprimer un message", "upload an object to a bucket", "translate a document",
    "weather forecast for tomorrow", "restore a backup snapshot", "build log of the pipeline",
]

# -- measurement -------------------------------------------------------------------------------------


def project_builtin_docs() -> list[ToolDoc]:
    """The project's real built-in modules (tooling.registry), which need Django settings."""
    import os
    import tempfile

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
    os.environ.setdefault("DIGITORN_DATA_DIR", tempfile.mkdtemp(prefix="bench-search-"))
    import django

    django.setup()
    from tooling import registry

    docs = []
    for module_id, cls in registry.all_modules().items():
        if getattr(cls, "hidden", False):
            continue  # callable by name only, never in an app's search index (tooling.index)
        if module_id in registry.MODULE_ALIASES:
            continue  # "bash" is the shell module under the original's id: the same tools twice
        for action, spec in cls.actions.items():
            docs.append(
                ToolDoc(
                    name=f"{module_id}.{action}",
                    module=module_id,
                    action=action,
                    description=spec.description,
                    aliases=tuple(spec.aliases),
                    tags=tuple(spec.tags),
                    category_description=cls.description,
                )
            )
    return docs


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def evaluate(index: ToolSearchIndex, queries: list[tuple[str, set[str]]] | None = None
             ) -> tuple[float, float, float, list[str]]:
    """recall@1, recall@5, MRR and the queries that missed the top 5."""
    queries = QUERIES if queries is None else queries
    top1 = hits = 0
    rr = 0.0
    misses: list[str] = []
    for query, expected in queries:
        names = [doc.name for doc, _ in index.search(query, max_results=10)]
        rank = next((i + 1 for i, name in enumerate(names) if name in expected), None)
        top1 += rank == 1
        if rank is not None and rank <= 5:
            hits += 1
        else:
            misses.append(f"{query!r} → {names[:5]}")
        rr += 1.0 / rank if rank else 0.0
    return top1 / len(queries), hits / len(queries), rr / len(queries), misses


def latencies_ms(index: ToolSearchIndex, queries: list[str]) -> tuple[float, float]:
    for q in queries[:20]:  # warm caches (stemmer, tokenizer) as a running daemon would have them
        index.search(q)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q, max_results=10)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=MODEL_PATH)
    parser.add_argument("--tools", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--misses", action="store_true", help="print the queries that missed the top 5")
    parser.add_argument("--strict", action="store_true",
                        help="score the core set with its original single answers (see STRICT_ANSWERS)")
    parser.add_argument(
        "--no-project-modules",
        dest="project_modules",
        action="store_false",
        help="skip the query set on the project's own built-in modules (needs Django settings)",
    )
    args = parser.parse_args()
    if args.strict:
        QUERIES[:] = [(q, STRICT_ANSWERS.get(q, expected)) for q, expected in QUERIES]

    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    embedder = load_embedder(args.model)
    load_s = time.perf_counter() - t0
    rss_model = rss_mb() - rss0

    synthetic = synthetic_docs(args.tools)
    big = BUILTIN_DOCS + synthetic
    rng = random.Random(11)
    pool = [q for q, _ in QUERIES] + SYNTHETIC_QUERIES
    queries = [rng.choice(pool) for _ in range(args.queries)]

    rows: list[tuple[str, ...]] = []
    builds: dict[str, ToolSearchIndex] = {}
    for mode, emb in (("hybrid", embedder), ("keyword", None)):
        t0 = time.perf_counter()
        index = ToolSearchIndex.build(synthetic, embedder=emb)
        build_s = time.perf_counter() - t0
        p50, p99 = latencies_ms(index, queries)
        rows.append((mode, f"{len(synthetic)}", f"{build_s * 1000:.0f} ms", f"{p50:.2f} ms", f"{p99:.2f} ms"))
        builds[mode] = index
    rss_total = rss_mb() - rss0

    corpora = [("built-ins only", BUILTIN_DOCS), (f"built-ins + {len(synthetic)} synthetic", big)]
    if args.project_modules:
        try:
            project = project_builtin_docs()
        except Exception as exc:  # noqa: BLE001 - a bench reports what it could not measure
            print(f"(project modules not measured: {type(exc).__name__}: {exc})")
        else:
            corpora.append((f"project modules ({len(project)} tools)", project))
    quality: list[tuple[str, ...]] = []
    all_misses: list[tuple[str, list[str]]] = []
    for label, docs in corpora:
        for fusion_label, emb, fusion in (
            ("hybrid, weighted sum", embedder, "weighted"),
            ("hybrid, RRF", embedder, "rrf"),
            ("keyword only", None, "weighted"),
        ):
            index = ToolSearchIndex.build(docs, embedder=emb, fusion=fusion)
            sets = [("core", QUERIES)]
            names = {doc.name for doc in docs}
            if label.startswith("project") and any(n.startswith(("pdf.", "git.", "web.")) for n in names):
                sets.append(("modules", MODULE_QUERIES))
            if label.startswith("project") and any(n.startswith("rag.") for n in names):
                sets.append(("paraphrases", PARAPHRASE_QUERIES))
            for set_label, query_set in sets:
                r1, recall, mrr, misses = evaluate(index, query_set)
                quality.append((label, fusion_label, f"{set_label} ({len(query_set)})", f"{r1:.3f}",
                                f"{recall:.3f}", f"{mrr:.3f}", f"{len(misses)}"))
                all_misses.append((f"{label} / {fusion_label} / {set_label}", misses))

    meta = embedder.meta
    print(f"model: {args.model.name} ({args.model.stat().st_size / 1e6:.1f} MB, {meta.get('vocab_size')} tokens "
          f"x {embedder.dim} dims)")
    print(f"model load: {load_s * 1000:.0f} ms, RSS +{rss_model:.0f} MB; RSS after both 1k-tool indexes: "
          f"+{rss_total:.0f} MB")
    print()
    print(_table(("mode", "tools", "build", "p50/query", "p99/query"), rows))
    print(f"({len(queries)} queries per mode, max_results=10)")
    print()
    print(_table(("corpus", "scoring", "queries", "recall@1", "recall@5", "MRR", "misses"), quality))
    print(f"(core: {len(QUERIES)} queries on the first five modules; modules: {len(MODULE_QUERIES)} on "
          f"pdf, git, workspace, web; paraphrases: {len(PARAPHRASE_QUERIES)} over every module, EN+FR; "
          "the last two measured on the project corpus when it has those modules)")
    if args.misses:
        for label, misses in all_misses:
            if misses:
                print(f"\n{label}:")
                for miss in misses:
                    print("  ", miss)
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


if __name__ == "__main__":
    raise SystemExit(main())
