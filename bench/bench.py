#!/usr/bin/env python3
"""`make bench`: every benchmark of the system, printed as one table.

The machines are shared and noisy, so each number is given as a ratio against a baseline
measured in the same run:
  - directory server: against a minimal stateless C server (bench/floor_server.c), the floor
    cost of one connection per request here, driven by the same load generator; the floor is
    measured with 1, 2 and 4 generator threads to show that the generator is not the limit;
    against the NIO floor (bench/nio-floor), the least a SwiftNIO server of this shape does;
    and against the path floor (bench/path-floor), our request path over the in-memory store,
    so that what is left is the durable store's; with the CPU per request of each;
  - SQLite: REGISTER's insert on the server's schema and writer settings in group commits of 16
    and 64, with and without the sync, against all of them in one transaction;
  - web page: the directory while its page and /metrics are read, against the same server idle;
  - large directory: the same server on a directory of 1,000,000 users (100,000 connected) and
    10,000,000 files, built by bulk insert, against the same server on an empty directory;
  - operation log: the directory server with the log on against the same server with --no-oplog;
  - time service: SOAP against plain GET /time;
  - GET_FILE: against a plain copy of the same bytes through a loopback socket with socat;
  - SHARE of 10,000 files: against the server's own PUBLISH limit (the load generator);
  - downloads between our peers: verified against plain GET_FILE, three capped owners against
    one, a resumed download against the file's size;
  - PostgreSQL store: one server on a private PostgreSQL against pgbench running the same SQL
    statements with as many clients (the database's own floor); three servers behind HAProxy
    against one server direct, with the CPU each part used;
  - NAT (simulated internet): reversed and punched GET_FILEs against a direct one; punches on
    one server against punches through a cluster; relayed GET_FILEs between symmetric NATs
    against the relay limit, one server, a cluster, and two at once in a cluster (`relay` alone);
  - keys: CONNECT and DISCONNECT of a keyed user (its proof) against an unkeyed user's;
  - TLS: a download from an owner bound to a key (TLS 1.3) against one from an owner bound to
    none (plain), with the CPU both ends use per GiB;
  - database tier under Patroni: REGISTER with the synchronous replica against the primary alone;
    a failover's time until requests succeed again (against the goal of 15 s) and the acknowledged
    changes lost (0).
"""
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build", "release")
TOOLS = os.path.join(ROOT, ".build", "bench")
DURATION = float(os.environ.get("BENCH_DURATION", "3"))
CLIENTS = [1, 16, 64]
WORKLOADS = ["register", "publish", "list-content", "mixed"]
FILE_MIB = int(os.environ.get("BENCH_FILE_MIB", "1024"))
# Generator threads for every directory measurement (the floor is also shown with 1 and 4).
LOADGEN_THREADS = int(os.environ.get("BENCH_LOADGEN_THREADS", "2"))
LARGE_USERS = int(os.environ.get("BENCH_LARGE_USERS", "1000000"))
LARGE_FILES_PER_USER = 10
LARGE_CONNECTED_EVERY = 10  # every 10th user is connected: 100,000 of 1,000,000
SHARE_FILES = int(os.environ.get("BENCH_SHARE_FILES", "10000"))

rows = []  # (section, what, value, baseline, ratio)


def log(message):
    print(f"bench | {message}", flush=True)


def build_tools():
    os.makedirs(TOOLS, exist_ok=True)
    for name in ["floor_server", "loadgen", "holder"]:
        libraries = ["-lcrypto"] if name == "loadgen" else []
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-pthread", "-o", os.path.join(TOOLS, name),
                        os.path.join(ROOT, "bench", f"{name}.c"), *libraries], check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20, inside=()):
    """Waits until something listens on 127.0.0.1:`port` (of the namespace `inside` runs in)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if inside:
            probe = [*inside, "bash", "-c", f": </dev/tcp/127.0.0.1/{port}"]
            if subprocess.run(probe, stderr=subprocess.DEVNULL).returncode == 0:
                return
        else:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def loadgen(port, workload, clients, tag, threads=None, duration=None, source=None, sessions=None):
    out = subprocess.run([os.path.join(TOOLS, "loadgen"), "--port", str(port), "--workload", workload,
                          "--clients", str(clients), "--duration", str(duration or DURATION), "--tag", tag,
                          "--threads", str(threads or LOADGEN_THREADS),
                          *(["--source", source] if source else []),
                          *(["--sessions", sessions] if sessions else [])],
                         check=True, capture_output=True, text=True).stdout
    result = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out)}
    result["note"] = f"load generator: {result['threads']:.0f} threads, {result['cpu_cores']:.2f} cores busy"
    return result


def start_server(data_dir, port, oplog=False, wait=True, extra=()):
    args = [os.path.join(BIN, "p2p-server"), "--host", "127.0.0.1", "-p", str(port), "--data-dir", data_dir,
            "--peer-check-interval", "0", *extra]
    if not oplog:
        args.append("--no-oplog")
    # stdout and stderr to files: a pipe nobody reads would fill up.
    output = open(os.path.join(os.path.dirname(data_dir), f"server-{port}.out"), "w+")
    errors = open(os.path.join(os.path.dirname(data_dir), f"server-{port}.err"), "w+")
    process = subprocess.Popen(args, stdout=output, stderr=errors, text=True)
    process.output = output
    process.errors = errors
    if wait:
        wait_port(port)
    return process


def start_scripted_client(clients, server_port, time_port, folder, errors_path, commands, wanted, extra=(),
                          environment=None):
    """A p2p-client in `folder` fed `commands` on stdin, once it printed `wanted`; appended to
    `clients` (for stopping them all at the end), its stderr in `errors_path`."""
    errors = open(errors_path, "w+")
    client = subprocess.Popen([os.path.join(BIN, "p2p-client"), "-s", "127.0.0.1", "-p", str(server_port),
                               "--time-service", f"http://127.0.0.1:{time_port}", *extra],
                              cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                              text=True, bufsize=1, env=environment)
    client.errors = errors
    clients.append(client)
    client.stdin.write("".join(f"{c}\n" for c in commands))
    client.stdin.flush()
    read_until(client, wanted)
    return client


def server_summary(process):
    """Stops the server and returns its last stdout lines (they hold the log counters)."""
    stop(process)
    process.output.seek(0)
    return process.output.read().splitlines()[-3:]


def measured(port, pid, workload, clients, tag):
    """A load generator run, with the CPU the server process `pid` used per request."""
    before = cpu_seconds([pid])
    result = loadgen(port, workload, clients, tag)
    used = cpu_seconds([pid]) - before
    requests = result["rps"] * DURATION
    result["cpu_us"] = used / requests * 1e6 if requests else 0.0
    return result


def directory_benchmark(work):
    """The directory server against three floors in the same run: the C floor (the machine's
    cost of one connection per request), the NIO floor (bench/nio-floor: what SwiftNIO
    itself allows for a server of this shape) and the path floor (bench/path-floor: our own
    request path over the in-memory reference store, so what is left is the durable store's),
    with the CPU each used per request."""
    floor_port, nio_port, path_port = free_port(), free_port(), free_port()
    floor = subprocess.Popen([os.path.join(TOOLS, "floor_server"), str(floor_port)], stdout=subprocess.DEVNULL)
    nio = subprocess.Popen([os.path.join(BIN, "nio-floor"), str(nio_port)], stdout=subprocess.DEVNULL)
    path = subprocess.Popen([os.path.join(BIN, "path-floor"), str(path_port)], stdout=subprocess.DEVNULL)
    wait_port(floor_port)
    wait_port(nio_port)
    wait_port(path_port)
    port = free_port()
    server = start_server(os.path.join(work, "directory"), port)
    try:
        # The floor must be the machine's, not the generator's: more generator threads must
        # not raise it.
        for threads in (1, 4):
            result = loadgen(floor_port, "register", 64, f"floort{threads}", threads=threads)
            rows.append(("directory", f"floor server, 64 clients, {threads} generator threads", result, None))
            log(f"floor with {threads} generator threads: {result['rps']:.0f} rps, "
                f"generator {result['cpu_cores']:.2f} cores")
        for clients in CLIENTS:
            base = measured(floor_port, floor.pid, "register", clients, f"floor{clients}")
            base["note"] += f"; {base['cpu_us']:.0f} us of CPU per request"
            rows.append(("directory", f"floor server, {clients} clients", base, None))
            nio_base = measured(nio_port, nio.pid, "register", clients, f"niofloor{clients}")
            nio_base["note"] += f"; {nio_base['cpu_us']:.0f} us of CPU per request"
            rows.append(("directory", f"NIO floor, {clients} clients", nio_base, base))
            for workload in WORKLOADS:
                path_base = measured(path_port, path.pid, workload, clients, f"path{workload}{clients}")
                path_base["note"] += (f"; {path_base['rps'] / nio_base['rps']:.2f} of the NIO floor; "
                                      f"{path_base['cpu_us']:.0f} us of CPU per request")
                rows.append(("directory", f"path floor {workload}, {clients} clients", path_base, base))
                result = measured(port, server.pid, workload, clients, f"{workload}{clients}")
                result["note"] += (f"; {result['rps'] / nio_base['rps']:.2f} of the NIO floor, "
                                   f"{result['rps'] / path_base['rps']:.2f} of the path floor; "
                                   f"{result['cpu_us']:.0f} us of CPU per request")
                rows.append(("directory", f"{workload}, {clients} clients", result, base))
                log(f"{workload:12} clients={clients:2} rps={result['rps']:.0f} (floor {base['rps']:.0f}, "
                    f"NIO floor {nio_base['rps']:.0f}, path floor {path_base['rps']:.0f}) "
                    f"p50={result['p50_ms']:.2f} ms p99={result['p99_ms']:.2f} ms "
                    f"errors={result['errors']:.0f} cpu/request {result['cpu_us']:.0f} us "
                    f"(path floor {path_base['cpu_us']:.0f} us)")
    finally:
        stop(server)
        stop(floor)
        stop(nio)
        stop(path)


def sqlite_commit_benchmark(work):
    """SQLite's own cost of REGISTER's insert on the server's schema and writer settings (WAL,
    the writer's cache, foreign keys), from Python's sqlite3 on one thread: all inserts in one
    transaction (the baseline: the b-tree work alone), then group commits of 16 and 64 random
    names with `synchronous=OFF` and `FULL` (the server's). What a commit adds per insert is the
    log: each insert dirties its own page, and every commit checksums and writes each dirty page.
    Rows give inserts a second and the CPU (user + system) per insert."""
    template = os.path.join(work, "sqlite-template")
    stop(start_server(template, free_port()))  # the server's schema, as it creates it
    count = int(os.environ.get("BENCH_SQLITE_INSERTS", "50000"))
    generator = random.Random(7)
    # In random order: the server's commits gather one request from each of many clients,
    # whose names lie in as many places of the index (the generator's are TAG-cN-SEQ).
    names = [f"u{index}-{generator.randrange(1 << 40):010x}" for index in range(count)]
    generator.shuffle(names)
    base = None
    for batch, synchronous in ((count, "OFF"), (16, "OFF"), (16, "FULL"), (64, "FULL")):
        path = os.path.join(work, f"sqlite-{batch}-{synchronous}.sqlite")
        shutil.copy(os.path.join(template, "directory.sqlite"), path)
        db = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode = WAL", f"synchronous = {synchronous}", "wal_autocheckpoint = 0",
                       "cache_size = -32768", "foreign_keys = ON"):
            db.execute(f"PRAGMA {pragma}")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.time()
        for first in range(0, count, batch):
            db.execute("BEGIN IMMEDIATE")
            for name in names[first:first + batch]:
                db.execute("INSERT INTO user (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (name,))
            db.execute("COMMIT")
            if first % 10000 < batch and first:
                db.execute("PRAGMA wal_checkpoint(RESTART)")  # as the server's checkpointer keeps the log short
        elapsed = time.time() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        db.close()
        cpu_us = ((after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)) / count * 1e6
        result = {"rps": count / elapsed, "note": f"{cpu_us:.1f} us of CPU per insert"}
        what = ("REGISTER's insert, all in one transaction" if batch == count
                else f"REGISTER's insert, {batch} per commit, synchronous={synchronous}")
        rows.append(("sqlite", what, result, base))
        base = base or result
        log(f"sqlite {what}: {result['rps']:.0f} inserts/s, {cpu_us:.1f} us of CPU per insert")


def rss_mib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RSSSampler:
    """Samples a process's resident memory every 50 ms; `peak` is the highest seen (and
    VmHWM, the kernel's own peak, is read at the end too)."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0.0, True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_mib(self.pid), rss_mib(self.pid, "VmHWM"))
            time.sleep(0.05)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def fill_large_directory(path, users=None):
    """Bulk-inserts the large directory (`users` users, 10 files each) into the schema the server
    created (not through the protocol: 11 million requests would take longer than the whole
    benchmark)."""
    users = users or LARGE_USERS
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = DELETE")  # one big write: no write-ahead log copy
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -262144")
    # The search index is kept by triggers; for a bulk insert it is cheaper to build it once at
    # the end. The server's own trigger definitions are put back as they were.
    triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'file'").fetchall()
    db.execute("BEGIN")
    for name, _ in triggers:
        db.execute(f"DROP TRIGGER {name}")
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {users - 1})
        INSERT INTO user (name, ip, port)
        SELECT printf('big-u%07d', i),
               CASE WHEN i % {LARGE_CONNECTED_EVERY} = 0 THEN '127.0.0.1' END,
               CASE WHEN i % {LARGE_CONNECTED_EVERY} = 0 THEN CAST(1024 + i % 60000 AS TEXT) END
        FROM n""")
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n
                                WHERE i < {users * LARGE_FILES_PER_USER - 1})
        INSERT INTO file (owner, name, description)
        SELECT printf('big-u%07d', i / {LARGE_FILES_PER_USER}), printf('file%d.txt', i % {LARGE_FILES_PER_USER}),
               printf('w%d w%d w%d', (i * 7919) % 20000, (i * 104729 + 13) % 20000, (i * 1299709 + 7) % 20000)
        FROM n""")
    if triggers:
        # Rebuilt, then merged into one segment, as a long-lived index settles: otherwise the
        # first commits after start would pay for merging the rebuild's segments.
        db.execute("INSERT INTO file_search (file_search) VALUES ('rebuild')")
        db.execute("INSERT INTO file_search (file_search) VALUES ('optimize')")
    for _, sql in triggers:
        db.execute(sql)
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode = WAL")
    db.close()


def request_fields(port, *fields):
    """Sends one request; returns the reply's fields and the milliseconds it took."""
    start = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"".join(field.encode() + b"\0" for field in fields))
        chunks = []
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).split(b"\0"), (time.time() - start) * 1000


def list_reply(port, what, *fields):
    """A list request (3 fields an entry); returns (code, entries, milliseconds)."""
    reply, ms = request_fields(port, *fields)
    code = int(reply[0])
    if code != 0:
        return code, 0, ms
    count = int(reply[1])
    if len(reply) != 2 + 3 * count + 1:
        raise RuntimeError(f"{what} announced {count} entries but sent {(len(reply) - 3) / 3:.1f}")
    return code, count, ms


def list_users(port, requester):
    return list_reply(port, "LIST_USERS", "LIST_USERS", "25/11/2026 13:05:09", requester)


def search(port, requester, query):
    return list_reply(port, "SEARCH", "SEARCH", "25/11/2026 13:05:09", requester, query)


# Descriptions in the large directory are three words of a 20,000-word vocabulary (w0 ...
# w19999); names file0.txt ... file9.txt.
SEARCH_QUERIES = ["w123 w456", "w77", "file3 w999", "w1234", "nothing-like-this", "W42 TXT"]


def warm_searches(port, seconds=5):
    """The search queries in turn for `seconds`, as a server that has been searched."""
    warm_until = time.time() + seconds
    while time.time() < warm_until:
        for query in SEARCH_QUERIES:
            search(port, "big-u0000000", query)


def searching_during_load(port, rate, tag):
    """SEARCH from one client (back to back, or `rate` a second) while the load generator runs
    mixed-rw at 64 clients; returns the run (with the searching client's cores) and the searches."""
    searches, cpu, done = [], [], threading.Event()

    def keep_searching():
        started = time.time()
        while not done.is_set():
            searches.append(search(port, "big-u0000000", SEARCH_QUERIES[len(searches) % len(SEARCH_QUERIES)]))
            if rate:
                time.sleep(max(0.0, started + len(searches) / rate - time.time()))
        cpu.append(time.thread_time())
    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    run = loadgen(port, "mixed-rw", 64, tag)
    done.set()
    searcher.join()
    run["searcher_cores"] = cpu[0] / DURATION
    return run, searches


def large_directory_benchmark(work):
    empty_dir, large_dir = os.path.join(work, "empty-directory"), os.path.join(work, "large-directory")
    # The server creates the schema; the rows are then bulk-inserted into it.
    port = free_port()
    stop(start_server(large_dir, port))
    started = time.time()
    fill_large_directory(os.path.join(large_dir, "directory.sqlite"))
    size_mb = os.path.getsize(os.path.join(large_dir, "directory.sqlite")) / 1e6
    log(f"large directory: {LARGE_USERS} users, {LARGE_USERS * LARGE_FILES_PER_USER} files, {size_mb:.0f} MB, "
        f"built in {time.time() - started:.0f} s")
    results = {}
    for name, folder in (("empty", empty_dir), ("large", large_dir)):
        port = free_port()
        started = time.time()
        server = start_server(folder, port, wait=False)
        sampler = RSSSampler(server.pid)
        try:
            wait_port(port, timeout=120)
            startup = time.time() - started
            measured = {}
            for workload in ("register", "publish", "list-content"):
                measured[workload] = loadgen(port, workload, 64, f"{name}-{workload}")
            if name == "large":
                # LIST_USERS of every connected user, again and again, while 64 clients run
                # LIST_CONTENT: the replies must be whole and the other requests not held up.
                lists, stop_lists = [], threading.Event()

                def keep_listing():
                    while not stop_lists.is_set():
                        lists.append(list_users(port, "big-u0000000"))
                lister = threading.Thread(target=keep_listing)
                lister.start()
                measured["list-content+list-users"] = loadgen(port, "list-content", 64, "large-lu")
                stop_lists.set()
                lister.join()
                measured["list-users"] = lists
                # SEARCH while 64 clients run a mixed workload (mixed-rw: the mixed workload
                # without its LIST_USERS, which here would be 2.8 MB replies and all the work),
                # from one more client, back to back and then at 50 searches a second; the same
                # workload alone is the baseline. Three rounds of the three, averaged: one run
                # against one run moves by 10-15% here by itself.
                # Descriptions are three words of a 20,000-word vocabulary (w0 ... w19999).
                # The first searches make the server build, in the background, the bitmaps of
                # the frequent prefixes and of the online files (about 3 s here): measured
                # after 5 s of the same searches alone, as a server that has been searched.
                warm_searches(port)

                def searching(rate, tag):
                    return searching_during_load(port, rate, tag)
                for key in ("mixed", "mixed+search", "mixed+paced", "search", "paced"):
                    measured[key] = []
                for round_ in range(3):
                    measured["mixed"].append(loadgen(port, "mixed-rw", 64, f"large-mixed{round_}"))
                    run, searches = searching(None, f"large-ms{round_}")
                    measured["mixed+search"].append(run)
                    measured["search"] += searches
                    run, searches = searching(50, f"large-mp{round_}")
                    measured["mixed+paced"].append(run)
                    measured["paced"] += searches
            peak = sampler.stop()
            results[name] = (startup, peak, measured)
        finally:
            sampler.running = False
            stop(server)
    (empty_start, empty_peak, empty), (large_start, large_peak, large) = results["empty"], results["large"]
    rows.append(("large directory", "start until accepting, empty (s)",
                 {"rps": empty_start, "plain": True, "note": f"peak RSS {empty_peak:.0f} MiB"}, None))
    rows.append(("large directory", "start until accepting, 1M users / 10M files (s)",
                 {"rps": large_start, "plain": True, "note": f"peak RSS {large_peak:.0f} MiB (target < 500); "
                                                              f"database {size_mb:.0f} MB"}, None))
    for workload in ("register", "publish", "list-content"):
        rows.append(("large directory", f"{workload}, 64 clients, empty directory", empty[workload], None))
        rows.append(("large directory", f"{workload}, 64 clients, large directory", large[workload], empty[workload]))
    lists = large["list-users"]
    if not lists or any(code != 0 or count < LARGE_USERS // LARGE_CONNECTED_EVERY for code, count, _ in lists):
        raise RuntimeError(f"LIST_USERS on the large directory answered wrongly: {lists[:3]}")
    times = sorted(ms for _, _, ms in lists)
    both = dict(large["list-content+list-users"])
    both["note"] = (f"while LIST_USERS of {lists[0][1]} users ran {len(lists)} times back to back "
                    f"(p50 {times[len(times) // 2]:.0f} ms, max {times[-1]:.0f} ms, every reply whole)")
    rows.append(("large directory", "list-content, 64 clients, with LIST_USERS running", both, large["list-content"]))
    def mean(runs):
        return {"rps": statistics.mean(r["rps"] for r in runs), "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
                "p99_ms": max(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs),
                "cpu_cores": statistics.mean(r["cpu_cores"] for r in runs)}
    base = mean(large["mixed"])
    base["note"] = f"three runs, averaged; load generator {base['cpu_cores']:.2f} cores busy"
    rows.append(("large directory", "mixed-rw, 64 clients", base, None))
    summary = []
    for runs, searches, how in ((large["mixed+search"], large["search"], "back to back"),
                                (large["mixed+paced"], large["paced"], "50 a second")):
        if not searches or any(code != 0 for code, _, _ in searches):
            raise RuntimeError(f"SEARCH on the large directory failed: {searches[:3]}")
        times = sorted(ms for _, _, ms in searches)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        result = mean(runs)
        ratios = ", ".join(f"{run['rps'] / plain['rps']:.2f}" for run, plain in zip(runs, large["mixed"]))
        result["note"] = (f"with SEARCH {how} from one more client: {len(searches)} searches, "
                          f"p50 {times[len(times) // 2]:.1f} ms, p99 {p99:.1f} ms (target < 50), "
                          f"{statistics.mean(n for _, n, _ in searches):.0f} hits on average; the searching "
                          f"client itself used {statistics.mean(r['searcher_cores'] for r in runs):.2f} cores; "
                          f"rounds {ratios}")
        rows.append(("large directory", f"mixed-rw, 64 clients, with SEARCH {how}", result, base))
        summary.append(f"{how}: p50 {times[len(times) // 2]:.1f} ms, p99 {p99:.1f} ms, mixed {result['rps'] / base['rps']:.2f}")
    log("search on 10M files: " + "; ".join(summary))
    log(f"large directory: start {large_start:.2f} s (empty {empty_start:.2f} s), peak RSS {large_peak:.0f} MiB; "
        + ", ".join(f"{w} {large[w]['rps'] / empty[w]['rps']:.2f}" for w in ("register", "publish", "list-content")))
    peer_check_benchmark(large_dir)


def peer_check_benchmark(large_dir, what="refused"):
    """The large directory with peer checks at the default interval (30 s): the first round
    starts 30 s after start and is spread over the next 24 s. Requests are measured during it
    and again on the same server once it is over (the next round starts 30 s later), each
    workload twice, interleaved. The 100,000 connected users point at ports where nothing
    listens, so every check fails (the failure count is set too high for any to expire)."""
    port = free_port()
    started = time.time()
    server = start_server(large_dir, port, extra=["--peer-check-interval", "30", "--peer-check-failures", "1000000"])
    workloads = ("register", "list-content")

    def measure(tag):
        runs = {w: [] for w in workloads}
        for index in range(2):
            for w in workloads:
                runs[w].append(loadgen(port, w, 64, f"pc-{tag}{index}-{w}"))
        return {w: {"rps": statistics.mean(r["rps"] for r in runs[w]),
                    "p50_ms": statistics.mean(r["p50_ms"] for r in runs[w]),
                    "p99_ms": max(r["p99_ms"] for r in runs[w]),
                    "errors": sum(r["errors"] for r in runs[w])} for w in workloads}
    try:
        time.sleep(max(0.0, started + 31 - time.time()))
        during = measure("during")
        deadline = time.time() + 60
        while time.time() < deadline and "peers checked in" not in open(server.errors.name).read():
            time.sleep(0.2)
        after = measure("after")
    finally:
        stop(server)
    rounds = re.findall(r"peer check: (\d+) peers checked in (\d+) ms", open(server.errors.name).read())
    if not rounds:
        raise RuntimeError("no peer-check round finished")
    note = f"{int(rounds[0][0])} peers checked in {int(rounds[0][1]) / 1000:.1f} s"
    for workload in workloads:
        rows.append(("peer checks", f"{workload}, 64 clients, large directory, between rounds", after[workload], None))
        result = dict(during[workload])
        result["note"] = f"during a round: {note} ({what})"
        rows.append(("peer checks", f"{workload}, 64 clients, large directory, during a round", result,
                     after[workload]))
    log(f"peer checks ({what}): {note}; " + ", ".join(
        f"{w} {during[w]['rps'] / after[w]['rps']:.2f}" for w in workloads))


def answering_peer_check_benchmark(work):
    """Peer checks on 100,000 connected users and no files, two ways, each measured as
    `peer_check_benchmark` does: users whose ports refuse (nothing listens there: a check is a
    refused connection), and users whose recorded address is one live responder, so that every
    check is the whole GET_FILE exchange (connect, request, reply, close). The responder is the
    C floor server (it answers a GET_FILE with "0"), the cheapest peer this machine can run; on a
    real network the peers' work, and their side of each TCP connection, are on their machines,
    here they share the server's two cores."""
    responder_port = free_port()
    responder = subprocess.Popen([os.path.join(TOOLS, "floor_server"), str(responder_port)],
                                 stdout=subprocess.DEVNULL)
    try:
        wait_port(responder_port)
        for what, port_sql in (("refused", "CAST(1024 + i % 60000 AS TEXT)"), ("answered", f"'{responder_port}'")):
            directory = os.path.join(work, f"checks-{what}", "directory")
            os.makedirs(os.path.dirname(directory))
            port = free_port()
            stop(start_server(directory, port))
            db = sqlite3.connect(os.path.join(directory, "directory.sqlite"), isolation_level=None)
            db.execute(f"""
                WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999)
                INSERT INTO user (name, ip, port) SELECT printf('u%06d', i), '127.0.0.1', {port_sql} FROM n""")
            db.close()
            before = len(rows)
            peer_check_benchmark(directory, what=what)
            for index in range(before, len(rows)):
                section, label, result, base = rows[index]
                rows[index] = (section, label.replace("large directory", f"100,000 users, checks {what}"), result,
                               base)
    finally:
        responder.terminate()
        responder.wait()


def shared_peer_check_benchmark(work):
    """Three servers on one PostgreSQL with 100,000 connected users: the peer checks are shared
    (each server claims its share of the users in the database), so the peers see about 100,000
    checks per round, not 300,000, and each server makes about a third of them (its claims, read
    from the database after the rounds; the first server claims everybody in its first round and
    gives back all but its share in its second). Every user's address is one responder, the C
    floor server, which counts the GET_FILE requests it answers; a round is a burst of them."""
    users = int(os.environ.get("BENCH_CHECK_USERS", "100000"))
    interval = 30
    postgres, pg_port, url = start_postgres(work)
    responder_port = free_port()
    responder = subprocess.Popen([os.path.join(TOOLS, "floor_server"), str(responder_port)],
                                 stdout=subprocess.PIPE, text=True)
    servers = []
    try:
        responder.stdout.readline()
        port = free_port()
        stop(start_server(os.path.join(work, "checks-pg-0"), port, extra=["--store", url]))  # the schema
        subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "p2p", "-d", "directory",
                        "-c", f"INSERT INTO directory_user (name, ip, port) SELECT 'u' || lpad(i::text, 6, '0'), "
                              f"'127.0.0.1', '{responder_port}' FROM generate_series(0, {users - 1}) AS i"],
                       check=True)
        started = time.time()
        for index in range(3):
            servers.append(start_server(os.path.join(work, f"checks-pg-{index + 1}"), free_port(),
                                        extra=["--store", url, "--peer-check-interval", str(interval),
                                               "--peer-check-failures", "1000000"]))

        def answered():
            responder.send_signal(signal.SIGUSR1)
            return int(responder.stdout.readline().split()[1])

        # A round is a burst of checks (spread over 80% of the interval) followed by a pause:
        # sampled twice a second until three whole bursts were seen.
        bursts, current, last, quiet = [], 0, answered(), 0.0
        deadline = started + 6 * interval
        while len(bursts) < 3 and time.time() < deadline:
            time.sleep(0.5)
            now = answered()
            if now > last:
                current += now - last
                quiet = 0.0
            else:
                quiet += 0.5
                if current and quiet >= 2.5:
                    bursts.append(current)
                    current = 0
            last = now
        if len(bursts) < 3:
            raise RuntimeError(f"saw {len(bursts)} rounds of peer checks ({bursts}) in {6 * interval} s")
        per_round = statistics.median(bursts)
        total, finished = sum(bursts), len(bursts)
        by_round = "rounds: " + ", ".join(f"{b:,}" for b in bursts)
        claims = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "p2p", "-d", "directory", "-c",
             "SELECT count(*) FROM directory_user WHERE check_until > now() GROUP BY check_by ORDER BY 1 DESC"],
            check=True, capture_output=True, text=True).stdout.split()
        by_server = "claims per server after them: " + ", ".join(f"{int(n):,}" for n in claims)
        result = {"rps": per_round, "plain": True,
                  "note": f"{users:,} connected users, 3 servers, interval {interval} s; checks answered by the peer "
                          f"{total:,} in {finished} rounds; {by_round}; {by_server} (every server checking "
                          f"everybody: {3 * users:,} a round)"}
        rows.append(("peer checks", "checks per round at the peers, 3 servers on PostgreSQL", result, None))
        log(f"shared peer checks: {per_round:,.0f} checks a round for {users:,} users ({per_round / users:.2f} per "
            f"user); {by_round}; {by_server}")
    finally:
        for server in servers:
            stop(server)
        responder.terminate()
        responder.wait()
        postgres.send_signal(signal.SIGINT)
        postgres.wait(timeout=30)


def web_benchmark(work):
    """The directory's throughput while its web side is in use: a /metrics scrape every second
    and 16 people reading the front page (each a page a second), against the same server with
    the web side idle; four pairs of runs (idle, then busy), averaged."""
    port, web_port = free_port(), free_port()
    server = start_server(os.path.join(work, "web-directory"), port, extra=["--http-port", str(web_port)])
    wait_port(web_port)
    workloads = ("register", "list-content")
    idle = {w: [] for w in workloads}
    busy = {w: [] for w in workloads}
    pages, readers_cpu = [], []
    try:
        # Each busy run right after an idle run of the same workload (idle, busy, idle, busy):
        # a run leaves the directory bigger and its write-ahead log longer, so the runs
        # compared must follow the same history.
        # A difference of a few percent between two runs of 3 s is within this machine's noise
        # (seen: 0.82 one run, 0.98 the next, for the same code): four pairs of 5 s runs.
        duration = max(DURATION, 5)
        for w in workloads:
            for round_ in range(4):
                idle[w].append(loadgen(port, w, 64, f"web-idle{round_}-{w}", duration=duration))
                stop_reading = threading.Event()
                fetched = []

                def read_every_second(path, offset):
                    # A person reading: one page a second (or /metrics, for the scraper). People
                    # do not arrive in step: each starts at its own moment within the first second.
                    stop_reading.wait(offset)
                    while not stop_reading.is_set():
                        started = time.time()
                        urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}", timeout=5).read()
                        fetched.append(path)
                        stop_reading.wait(max(0.0, 1.0 - (time.time() - started)))
                readers = [threading.Thread(target=read_every_second, args=(path, index / 17))
                           for index, path in enumerate(["/metrics"] + ["/"] * 16)]
                cpu_before = time.process_time()
                for reader in readers:
                    reader.start()
                # Measured once all readers are reading (the steady state, not their arrival).
                time.sleep(1.0)
                busy[w].append(loadgen(port, w, 64, f"web-busy{round_}-{w}", duration=duration))
                stop_reading.set()
                for reader in readers:
                    reader.join()
                # This process does nothing else meanwhile: its CPU time is the readers'.
                readers_cpu.append(time.process_time() - cpu_before)
                pages.append(len(fetched))
    finally:
        stop(server)

    def mean(runs):
        return {"rps": statistics.mean(r["rps"] for r in runs), "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
                "p99_ms": max(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs)}
    for w in workloads:
        rows.append(("web page", f"{w}, 64 clients, web side idle", mean(idle[w]), None))
        result = mean(busy[w])
        result["note"] = (f"with /metrics scraped every second and 16 readers of the page, each a page a second "
                          f"({statistics.mean(pages):.0f} pages and scrapes per run; the readers themselves used "
                          f"{statistics.mean(readers_cpu):.2f} s of CPU per run)")
        rows.append(("web page", f"{w}, 64 clients, web side busy", result, mean(idle[w])))
    log("web page: " + ", ".join(f"{w} {mean(busy[w])['rps'] / mean(idle[w])['rps']:.2f}" for w in workloads)
        + f"; {statistics.mean(pages):.0f} pages and scrapes per run, readers' CPU {statistics.mean(readers_cpu):.2f} s per run")


def start_postgres(work, inside=()):
    """A private PostgreSQL in `work` on a free port (as the postgres user when we are root, since
    PostgreSQL refuses root), with a database `directory`; run through `inside` (a command
    prefix such as `ip netns exec NS`) when given. Returns (process, port, url)."""
    bins = sorted((d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()), key=int)
    pg_bin = f"/usr/lib/postgresql/{bins[-1]}/bin"
    folder = os.path.join(work, "postgres-" + inside[-1] if inside else "postgres")
    os.makedirs(folder)
    as_postgres = []
    if os.getuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        os.chmod(work, 0o755)  # mkdtemp's 0700 would keep the postgres user out
        as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    data = os.path.join(folder, "data")
    subprocess.run(as_postgres + [f"{pg_bin}/initdb", "-D", data, "-U", "p2p", "--auth=trust", "-E", "UTF8",
                                  "--locale=C", "--no-sync"], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    # Enough sessions for 64 pgbench clients and the servers' pools.
    process = subprocess.Popen([*inside] + as_postgres + [f"{pg_bin}/postgres", "-D", data, "-p", str(port),
                                              "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}",
                                              "-c", "max_connections=200", "-c", "shared_buffers=128MB"],
                               stdout=subprocess.DEVNULL, stderr=open(os.path.join(folder, "log"), "w"))
    deadline = time.time() + 60
    while subprocess.run([*inside, f"{pg_bin}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode != 0:
        if time.time() > deadline or process.poll() is not None:
            raise RuntimeError("PostgreSQL did not start")
        time.sleep(0.1)
    subprocess.run([*inside, "psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "p2p", "-d", "postgres",
                    "-c", "CREATE DATABASE directory"], check=True)
    return process, port, f"postgres://p2p@127.0.0.1:{port}/directory?sslmode=disable"


def wait_for(what, condition, timeout=60):
    """Polls `condition` every 0.1 s until it holds; raises after `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def cpu_seconds(pids):
    """User + system CPU seconds used so far by the processes `pids` (and their reaped children)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / tick
        except (OSError, IndexError):
            pass
    return total


def postgres_pids():
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() in ("postgres", "postmaster"):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def pgbench(port, script, clients, threads, tag, work):
    """pgbench running `script` (SQL, pgbench's variables) with `clients` sessions, the extended
    protocol as postgres-nio uses it; rate, latency percentiles from its per-transaction log."""
    path = os.path.join(work, f"{tag}.sql")
    with open(path, "w") as f:
        f.write(script)
    prefix = os.path.join(work, f"pgbench-{tag}")
    before = os.times()
    out = subprocess.run(["pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "p2p", "-c", str(clients),
                          "-j", str(threads), "-T", str(int(max(DURATION, 1))), "-M", "extended", "-f", path,
                          "-l", f"--log-prefix={prefix}", "directory"],
                         check=True, capture_output=True, text=True).stdout
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    latencies, errors = [], 0
    for name in os.listdir(work):
        if name.startswith(f"pgbench-{tag}."):
            with open(os.path.join(work, name)) as log_file:
                for line in log_file:
                    fields = line.split()
                    if fields[2] == "failed":
                        errors += 1
                    else:
                        latencies.append(int(fields[2]) / 1000)
    latencies.sort()
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    return {"rps": tps, "p50_ms": latencies[len(latencies) // 2], "p99_ms": latencies[int(len(latencies) * 0.99)],
            "errors": errors, "note": f"pgbench: {threads} threads, {cpu / max(DURATION, 1):.2f} cores busy"}


def postgres_benchmark(work):
    """The PostgreSQL store: one server against pgbench running the same statements (the floor of
    the database itself), then three servers behind HAProxy against one server direct."""
    postgres, pg_port, url = start_postgres(work)
    servers, balancer = [], None
    try:
        port = free_port()
        servers.append(start_server(os.path.join(work, "pg-1"), port, extra=["--store", url] + os.environ.get("BENCH_PG_SERVER_ARGS", "").split()))
        # The load generator's set-up (the owner, its files, a user per client) comes first: the
        # pgbench scripts read those rows.
        for workload in ("register", "list-content"):
            loadgen(port, workload, 64, f"pg{workload}", duration=0.5)
        # The same SQL as the store runs per request (see PostgresDirectoryStore): REGISTER is one
        # INSERT in a transaction; LIST_CONTENT one SELECT of the requester, the owner and the
        # owner's files (on the users and files the load generator created above).
        register_sql = ("\\set n random(1, 1000000000000)\n"
                        "BEGIN;\n"
                        "INSERT INTO directory_user (name) VALUES ('pgbench-' || :client_id || '-' || :n) "
                        "ON CONFLICT (name) DO NOTHING RETURNING 1;\n"
                        "COMMIT;\n")
        list_sql = ("\\set c random(0, 63)\n"
                    "SELECT r.name IS NOT NULL, r.ip IS NOT NULL, o.name IS NOT NULL, f.name, f.description "
                    "FROM (VALUES (1)) AS one (x) "
                    "LEFT JOIN directory_user r ON r.name = 'pglist-content-c' || :c "
                    "LEFT JOIN directory_user o ON o.name = 'pglist-content-owner' "
                    "LEFT JOIN directory_file f ON f.owner = o.name AND r.ip IS NOT NULL ORDER BY f.id;\n")
        # The floor must be the database's, not pgbench's: pgbench runs with 2 threads, and 4
        # must not raise it (1 thread does limit it: about 0.25 below).
        more = pgbench(pg_port, register_sql, 64, 4, "register-t4", work)
        rows.append(("postgres", "pgbench, register's SQL, 64 clients, 4 threads", more, None))
        log(f"pgbench register with 4 threads: {more['rps']:.0f} tps, {more['note']}")
        # Three rounds of (pgbench, server) per workload, averaged: single runs of 3 s differed by
        # up to 40% here.
        def mean(runs, note):
            return {"rps": statistics.mean(r["rps"] for r in runs), "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.mean(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs),
                    "note": note + f"; mean of {len(runs)} runs, ratios {', '.join(f'{r:.2f}' for r in ratios)}"}
        for workload, sql in (("register", register_sql), ("list-content", list_sql)):
            floors, servers_runs, ratios = [], [], []
            for round_ in range(3):
                floors.append(pgbench(pg_port, sql, 64, 2, f"{workload}{round_}", work))
                # New names for each REGISTER run; LIST_CONTENT reads what its set-up made.
                tag = f"pg{workload}" if workload == "list-content" else f"pg{workload}{round_}"
                servers_runs.append(loadgen(port, workload, 64, tag))
                ratios.append(servers_runs[-1]["rps"] / floors[-1]["rps"])
            floor = mean(floors, floors[0]["note"])
            result = mean(servers_runs, servers_runs[0]["note"])
            rows.append(("postgres", f"pgbench, {workload}'s SQL, 64 clients", floor, None))
            rows.append(("postgres", f"{workload}, 64 clients, one server", result, floor))
            log(f"postgres {workload:12} server {result['rps']:.0f} rps vs pgbench {floor['rps']:.0f} tps: "
                f"{result['rps'] / floor['rps']:.2f} ({', '.join(f'{r:.2f}' for r in ratios)}); "
                f"p99 {result['p99_ms']:.2f} ms (pgbench {floor['p99_ms']:.2f}), errors {result['errors']:.0f}")

        # Three servers behind HAProxy (PROXY protocol v2) against the one server direct.
        ports = [free_port() for _ in range(3)]
        for index, backend in enumerate(ports):
            servers.append(start_server(os.path.join(work, f"pg-cluster-{index}"), backend,
                                        extra=["--store", url, "--proxy-protocol"]))
        balancer, front = start_balancer(work, ports)
        def measured(target_port, tag, watched):
            before = {name: cpu_seconds(pids()) for name, pids in watched.items()}
            started = time.time()
            result = loadgen(target_port, workload, 64, tag)
            elapsed = time.time() - started
            used = {name: (cpu_seconds(pids()) - before[name]) / elapsed for name, pids in watched.items()}
            result["note"] = ("cores busy: " + ", ".join(f"{name} {cores:.2f}" for name, cores in used.items())
                              + f", load generator {result['cpu_cores']:.2f}; server CPU per request "
                              + f"{1e6 * used['servers'] / result['rps']:.0f} us")
            return result
        for workload in ("register", "list-content"):
            direct = measured(port, f"pgdirect{workload}",
                              {"PostgreSQL": postgres_pids, "servers": lambda: [servers[0].pid]})
            rows.append(("postgres", f"{workload}, 64 clients, one server direct", direct, None))
            result = measured(front, f"pgcluster{workload}",
                              {"PostgreSQL": postgres_pids, "servers": lambda: [s.pid for s in servers[1:]],
                               "HAProxy": lambda: [balancer.pid]})
            rows.append(("postgres", f"{workload}, 64 clients, 3 servers behind HAProxy", result, direct))
            log(f"postgres {workload:12} 3 servers behind HAProxy {result['rps']:.0f} rps vs one direct "
                f"{direct['rps']:.0f}: {result['rps'] / direct['rps']:.2f}; {result['note']}; direct: {direct['note']}")
    finally:
        if balancer:
            stop(balancer)
        for server in servers:
            stop(server)
        postgres.send_signal(signal.SIGINT)
        postgres.wait(timeout=30)


HA_SCRIPT = os.path.join(ROOT, "scripts", "pg-ha.sh")


class HATier:
    """The database tier of `make run-cluster` (scripts/pg-ha.sh): etcd, two PostgreSQL nodes under
    Patroni with a synchronous replica, HAProxy to the primary; private, in `work`/ha."""

    def __init__(self, work):
        self.folder = os.path.join(work, "ha")
        os.makedirs(self.folder)
        if os.getuid() == 0:
            os.chmod(work, 0o755)  # mkdtemp's 0700 would keep the postgres user out
        names = ["PG_PORT", "ETCD_PORT", "ETCD_PEER_PORT", "NODE1_PORT", "NODE2_PORT", "REST1_PORT", "REST2_PORT"]
        self.ports = {name: free_port() for name in names}
        subprocess.run([HA_SCRIPT, "configure", self.folder], check=True,
                       env={**os.environ, **{k: str(v) for k, v in self.ports.items()}})
        self.processes = {}
        self.start("etcd")
        wait_port(self.ports["ETCD_PORT"])
        self.start("node", "1")
        wait_for("node 1 to be the primary", lambda: self.ask("primary") == "1", 120)
        self.start("node", "2")
        self.start("proxy")
        self.wait_synchronous()
        self.psql("CREATE DATABASE directory", database="postgres")
        self.url = f"postgres://p2p@127.0.0.1:{self.ports['PG_PORT']}/directory?sslmode=disable"

    def start(self, command, *args):
        name = command + "".join(args)
        output = open(os.path.join(self.folder, f"{name}.log"), "a")
        self.processes[name] = subprocess.Popen([HA_SCRIPT, command, self.folder, *args], stdout=output,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def ask(self, command, *args):
        run = subprocess.run([HA_SCRIPT, command, self.folder, *args], capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else None

    def wait_synchronous(self, timeout=120):
        def ready():
            primary, standby = self.ask("primary"), self.ask("sync")
            return primary and standby and primary != standby
        wait_for("a synchronous standby", ready, timeout)

    def psql(self, sql, database="directory", node=None):
        port = self.ports[f"NODE{node}_PORT"] if node else self.ports["PG_PORT"]
        return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                               str(port), "-U", "p2p", "-d", database, "-c", sql],
                              check=True, capture_output=True, text=True).stdout.split()

    def kill_node(self, node):
        """The node's machine lost: its Patroni and PostgreSQL frozen at once, then killed."""
        subprocess.run([HA_SCRIPT, "lose", self.folder, str(node)], check=True)
        self.processes[f"node{node}"].wait()

    def stop_node(self, node):
        stop(self.processes[f"node{node}"])

    def print_logs(self, lines=40):
        for name in ["node1", "node2"]:
            with open(os.path.join(self.folder, f"node{name[-1]}.log")) as f:
                news = [line.rstrip() for line in f if "no action." not in line and "Lock owner" not in line]
            print(f"--- {name}\n" + "\n".join(news[-lines:]))

    def stop(self):
        for name in ["proxy", "node2", "node1", "etcd"]:
            process = self.processes.get(name)
            if process:
                stop(process)


def start_balancer(work, backends, name="haproxy", bind="127.0.0.1", inside=()):
    """HAProxy in front of directory servers (PROXY protocol v2), as make run-cluster runs it;
    listening on `bind`, run through `inside` (a command prefix) when given."""
    front = free_port()
    config = os.path.join(work, f"{name}.cfg")
    with open(config, "w") as f:
        f.write("global\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 2s\n"
                "    timeout client 30s\n    timeout server 30s\n    retries 3\n    option redispatch 1\n"
                f"frontend directory\n    bind {bind}:{front}\n    default_backend servers\n"
                "backend servers\n    balance roundrobin\n"
                + "".join(f"    server s{i} 127.0.0.1:{p} send-proxy-v2 check inter 1s\n"
                          for i, p in enumerate(backends)))
    balancer = subprocess.Popen([*inside, "/usr/sbin/haproxy", "-db", "-f", config], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    wait_port(front, inside=inside)
    return balancer, front


class RegisterStream:
    """Threads sending REGISTERs of new names through `port`, every outcome kept."""

    def __init__(self, port, threads=8, tag="ha"):
        self.port, self.tag = port, tag
        self.outcomes = []  # (name, code or None, sent, answered)
        self.lock = threading.Lock()
        self.stopping = False
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self, index):
        count = 0
        while not self.stopping:
            name = f"{self.tag}-{index}-{count}"
            count += 1
            sent = time.time()
            code = None
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(b"REGISTER\0" + b"25/11/2026 13:05:09\0" + name.encode() + b"\0")
                    reply = s.recv(16)
                if reply:
                    code = reply[0] - 48 if 48 <= reply[0] <= 57 else reply[0]
            except OSError:
                time.sleep(0.02)
            with self.lock:
                self.outcomes.append((name, code, sent, time.time()))

    def acknowledged_since(self, moment):
        with self.lock:
            return [o for o in self.outcomes if o[1] == 0 and o[2] > moment]

    def wait_recovery(self, moment, timeout=60):
        """Seconds from `moment` until the first request sent after it was answered 0 (waits for
        100 such answers, so that the service is back, not one lucky request)."""
        wait_for("requests to succeed again", lambda: len(self.acknowledged_since(moment)) >= 100, timeout)
        return min(o[3] for o in self.acknowledged_since(moment)) - moment

    def stop(self):
        self.stopping = True
        for thread in self.threads:
            thread.join()
        return self.outcomes


def failover_benchmark(work):
    """The database tier that survives losing a machine: what the synchronous replica costs
    (REGISTER through three servers with and without the replica), and under a stream of
    REGISTERs through three servers: the primary's PostgreSQL killed (Patroni restarts it in
    place), then the primary's machine lost (Patroni promotes the replica): the time until
    requests succeed again and how many acknowledged REGISTERs are missing afterwards."""
    tier = HATier(work)
    servers, balancer = [], None
    try:
        ports = [free_port() for _ in range(3)]
        for index, backend in enumerate(ports):
            servers.append(start_server(os.path.join(work, f"ha-{index}"), backend,
                                        extra=["--store", tier.url, "--proxy-protocol"]))
        balancer, front = start_balancer(work, ports, "ha-haproxy")
        loadgen(front, "register", 64, "hawarm", duration=0.5)

        # Two alternating rounds each: with the synchronous replica, and with the replica stopped
        # (non-strict: the primary goes on alone); the latter is the baseline.
        with_replica, alone = [], []
        for round_ in range(2):
            with_replica.append(loadgen(front, "register", 64, f"hasync{round_}"))
            tier.stop_node(2)
            wait_for("the primary to go on alone", lambda: tier.ask("sync") is None, 30)
            alone.append(loadgen(front, "register", 64, f"haalone{round_}"))
            tier.start("node", "2")
            tier.wait_synchronous()
        def mean(runs):
            return {"rps": statistics.mean(r["rps"] for r in runs), "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.mean(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs),
                    "note": runs[0]["note"] + f"; mean of {len(runs)} runs"}
        base, synced = mean(alone), mean(with_replica)
        rows.append(("failover", "REGISTER, 64 clients, 3 servers, primary alone (replica stopped)", base, None))
        rows.append(("failover", "REGISTER, 64 clients, 3 servers, synchronous replica", synced, base))
        log(f"failover: REGISTER with the synchronous replica {synced['rps']:.0f} rps vs alone {base['rps']:.0f}: "
            f"{synced['rps'] / base['rps']:.2f}")

        stream = RegisterStream(front)
        wait_for("a steady stream", lambda: len(stream.acknowledged_since(0)) >= 500, 60)
        primary = int(tier.ask("primary"))
        postmaster = int(tier.ask("postmaster", str(primary)))
        crash = time.time()
        os.kill(postmaster, signal.SIGKILL)
        restarted = stream.wait_recovery(crash)
        tier.wait_synchronous()
        primary = int(tier.ask("primary"))
        tier.kill_node(primary)
        lost_at = time.time()  # just after the freeze: nothing of the node answers after it
        failed_over = stream.wait_recovery(lost_at)
        outcomes = stream.stop()
        acknowledged = {name for name, code, _, _ in outcomes if code == 0}
        present = set(tier.psql("SELECT name FROM directory_user"))
        lost = len(acknowledged - present)
        slowest = max(answered - sent for _, _, sent, answered in outcomes)
        note = (f"{len(outcomes)} REGISTERs by 8 threads through HAProxy, {len(acknowledged)} answered 0, "
                f"{lost} of them missing afterwards; slowest answer {slowest:.1f} s")
        rows.append(("failover", "primary's PostgreSQL killed (restarted in place): served again after, s",
                     {"rps": restarted, "plain": True, "note": note}, None))
        rows.append(("failover", "primary's machine lost (Patroni and PostgreSQL killed): served again after, s",
                     {"rps": failed_over, "plain": True,
                      "note": f"goal < 15 s; Patroni ttl 8 s, loop_wait 1 s, HAProxy check every 1 s; {lost} lost"},
                     None))
        log(f"failover: restarted in place, served again after {restarted:.1f} s; machine lost, after "
            f"{failed_over:.1f} s; {note}")
        tier.start("node", str(primary))
        tier.wait_synchronous()
    except Exception:
        tier.print_logs()
        raise
    finally:
        if balancer:
            stop(balancer)
        for server in servers:
            stop(server)
        tier.stop()


def fill_postgres_directory(pg_port, users):
    """The large directory's rows (as fill_large_directory makes them for SQLite) bulk-inserted
    into the PostgreSQL store's tables, with the search words the store keeps for each file.
    The word table's keys are dropped for the insert and put back after, as the schema has them."""
    files = users * LARGE_FILES_PER_USER
    sql = f"""
        SET synchronous_commit = off;
        SET maintenance_work_mem = '256MB';
        INSERT INTO directory_user (name, ip, port)
        SELECT 'big-u' || lpad(i::text, 7, '0'),
               CASE WHEN i % {LARGE_CONNECTED_EVERY} = 0 THEN '127.0.0.1' END,
               CASE WHEN i % {LARGE_CONNECTED_EVERY} = 0 THEN (1024 + i % 60000)::text END
        FROM generate_series(0, {users - 1}) AS i;
        INSERT INTO directory_file (owner, name, description)
        SELECT 'big-u' || lpad((i / {LARGE_FILES_PER_USER})::text, 7, '0'), 'file' || (i % {LARGE_FILES_PER_USER}) || '.txt',
               'w' || (i * 7919) % 20000 || ' w' || (i * 104729 + 13) % 20000 || ' w' || (i * 1299709 + 7) % 20000
        FROM generate_series(0::bigint, {files - 1}) AS i;
        ALTER TABLE directory_file_word DROP CONSTRAINT directory_file_word_pkey;
        ALTER TABLE directory_file_word DROP CONSTRAINT directory_file_word_file_id_fkey;
        DROP INDEX directory_file_word_file_word;
        DROP INDEX directory_file_word_search;
        -- The words of name and description as DirectoryRules.searchWords makes them of ASCII
        -- text: runs of letters and digits, lower-cased, each once per file; with the owner's
        -- being offline, the order SEARCH answers in, and all the file's words, each after a
        -- space (the store's wordsColumn). In file order, as PUBLISH appends them.
        INSERT INTO directory_file_word (word, file_id, offline, words)
        WITH w AS MATERIALIZED (
            SELECT DISTINCT word, f.id AS file_id, u.ip IS NULL AS offline
            FROM directory_file f JOIN directory_user u ON u.name = f.owner,
                regexp_split_to_table(lower(f.name || ' ' || f.description), '[^a-z0-9]+') AS word
            WHERE word <> '')
        SELECT w.word, w.file_id, w.offline, a.words FROM w JOIN (
            SELECT file_id, string_agg(' ' || word, '' ORDER BY word) AS words FROM w GROUP BY file_id) AS a
        USING (file_id)
        ORDER BY w.file_id;
        ALTER TABLE directory_file_word ADD PRIMARY KEY (word, file_id);
        ALTER TABLE directory_file_word ADD FOREIGN KEY (file_id) REFERENCES directory_file (id) ON DELETE CASCADE;
        CREATE INDEX directory_file_word_file_word ON directory_file_word (file_id, word);
        CREATE INDEX directory_file_word_search ON directory_file_word (word, offline, file_id) INCLUDE (words);
    """
    # VACUUM apart (it cannot run in the one transaction psql makes of -c), as autovacuum
    # would have by the time a long-lived directory is this large: index-only scans need it.
    # Then a CHECKPOINT: the fill leaves gigabytes written but not yet on disk (in the shared
    # buffers and the kernel's page cache), which the next checkpoint would otherwise flush in
    # the middle of the measurement; a directory that grew to this size over time has no such
    # backlog.
    for statement in (sql, "VACUUM (ANALYZE)", "CHECKPOINT"):
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(pg_port), "-U",
                        "p2p", "-d", "directory", "-c", statement], check=True)


def postgres_search_benchmark(work):
    """SEARCH on the PostgreSQL store at 10,000,000 files (BENCH_PG_SEARCH_USERS users, 10 files
    each): one client searching back to back, and at 50 a second, while 64 clients run the
    mixed load, against the mixed load alone (two rounds of each)."""
    users = int(os.environ.get("BENCH_PG_SEARCH_USERS", str(LARGE_USERS)))
    postgres, pg_port, url = start_postgres(work)
    server = None
    try:
        port = free_port()
        stop(start_server(os.path.join(work, "pgsearch-schema"), port, extra=["--store", url]))
        started = time.time()
        fill_postgres_directory(pg_port, users)
        log(f"postgres search: {users:,} users, {users * LARGE_FILES_PER_USER:,} files filled in "
            f"{time.time() - started:.0f} s")
        server = start_server(os.path.join(work, "pgsearch"), port, extra=["--store", url])
        queries = SEARCH_QUERIES
        warm_searches(port)

        def searching(rate, tag):
            return searching_during_load(port, rate, tag)
        alone, runs = [], {"back to back": ([], []), "50 a second": ([], [])}
        for round_ in range(2):
            alone.append(loadgen(port, "mixed-rw", 64, f"pgs-mixed{round_}"))
            for how, rate in (("back to back", None), ("50 a second", 50)):
                run, searches = searching(rate, f"pgs-{rate or 'b2b'}{round_}")
                runs[how][0].append(run)
                runs[how][1].extend(searches)
        def mean(results):
            return {"rps": statistics.mean(r["rps"] for r in results),
                    "p50_ms": statistics.mean(r["p50_ms"] for r in results),
                    "p99_ms": max(r["p99_ms"] for r in results), "errors": sum(r["errors"] for r in results)}
        base = mean(alone)
        base["note"] = f"{users * LARGE_FILES_PER_USER:,} files on PostgreSQL; two runs, averaged"
        rows.append(("postgres search", "mixed-rw, 64 clients", base, None))
        summary = []
        for how, (results, searches) in runs.items():
            if not searches:
                raise RuntimeError(f"no SEARCH on PostgreSQL answered ({how})")
            # A search the store gave up on (its 2 s deadline) is answered 3: counted, and its
            # time is in the percentiles.
            failed = sum(1 for code, _, _ in searches if code != 0)
            times = sorted(ms for _, _, ms in searches)
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            result = mean(results)
            by_query = {}
            for index, (code, _, ms) in enumerate(searches):
                by_query.setdefault(queries[index % len(queries)], []).append(ms)
            slowest = ", ".join(f"'{q}' {statistics.median(ms):.0f}" for q, ms in by_query.items())
            result["note"] = (f"with SEARCH {how} from one more client: {len(searches)} searches, {failed} answered "
                              f"an error (the store's 2 s deadline), p50 {times[len(times) // 2]:.1f} ms, p99 "
                              f"{p99:.1f} ms (target < 50); median ms by query: {slowest}")
            rows.append(("postgres search", f"mixed-rw, 64 clients, with SEARCH {how}", result, base))
            summary.append(f"{how}: p50 {times[len(times) // 2]:.1f} ms, p99 {p99:.1f} ms, {failed} errors, "
                           f"mixed {result['rps'] / base['rps']:.2f}; median ms by query: {slowest}")
        log(f"search on PostgreSQL, {users * LARGE_FILES_PER_USER:,} files: " + "; ".join(summary))
    finally:
        if server:
            stop(server)
        postgres.send_signal(signal.SIGINT)
        postgres.wait(timeout=60)


def oplog_benchmark(work):
    oplog = subprocess.Popen([os.path.join(ROOT, "rpc", "p2p-oplog")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while subprocess.run(["rpcinfo", "-t", "localhost", "536871065", "1"], capture_output=True).returncode != 0:
        if time.time() > deadline:
            raise RuntimeError("p2p-oplog did not register")
        time.sleep(0.1)
    try:
        with_log, without = [], []
        summaries = []
        for round_ in range(2):
            for enabled in (False, True):
                port = free_port()
                server = start_server(os.path.join(work, f"oplog-{round_}-{enabled}"), port, oplog=enabled)
                result = loadgen(port, "register", 64, f"log{round_}{enabled}")
                lines = server_summary(server)
                (with_log if enabled else without).append(result)
                if enabled:
                    summaries += [line for line in lines if "operation log:" in line]
        dropped = sum(int(m) for line in summaries for m in re.findall(r"dropped (\d+)", line))
        delivered = sum(int(m) for line in summaries for m in re.findall(r"delivered (\d+)", line))
        calls = sum(int(m) for line in summaries for m in re.findall(r"in (\d+) calls", line))
        on = {"rps": statistics.mean(r["rps"] for r in with_log),
              "p99_ms": statistics.mean(r["p99_ms"] for r in with_log), "errors": sum(r["errors"] for r in with_log)}
        off = {"rps": statistics.mean(r["rps"] for r in without),
               "p99_ms": statistics.mean(r["p99_ms"] for r in without), "errors": 0}
        on["note"] = f"{delivered} records delivered in {calls} calls, {dropped} dropped"
        rows.append(("operation log", "register, 64 clients, --no-oplog", off, None))
        rows.append(("operation log", "register, 64 clients, log on", on, off))
        log(f"oplog on: {on['rps']:.0f} rps vs off {off['rps']:.0f} rps; {on['note']}")
    finally:
        stop(oplog)


def copy_benchmark(work):
    """`p2p-server copy-directory` of SQLite directories of growing size into a private
    PostgreSQL: the copy's peak memory (VmHWM, sampled) must not grow with the directory."""
    postgres, pg_port, _ = start_postgres(work)
    try:
        sizes = [int(n) for n in os.environ.get("BENCH_COPY_USERS", "10000,100000").split(",")]
        for users in sizes:
            data = os.path.join(work, f"copy-{users}")
            port = free_port()
            stop(start_server(data, port))  # creates the schema
            fill_large_directory(os.path.join(data, "directory.sqlite"), users)
            database = f"copy{users}"
            subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "p2p", "-d", "postgres",
                            "-c", f"CREATE DATABASE {database}"], check=True)
            url = f"postgres://p2p@127.0.0.1:{pg_port}/{database}?sslmode=disable"
            started = time.time()
            process = subprocess.Popen([os.path.join(BIN, "p2p-server"), "copy-directory", "--from", data, "--to", url],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            peak = 0.0
            while process.poll() is None:
                try:
                    peak = max(peak, peak_rss_mib(process.pid))
                except (FileNotFoundError, ProcessLookupError):
                    break
                time.sleep(0.05)
            out, err = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"copy-directory failed: {err.strip()}")
            seconds = time.time() - started
            files = users * LARGE_FILES_PER_USER
            rows.append(("copy-directory", f"{users:,} users, {files:,} files into PostgreSQL",
                         {"rps": files / seconds, "note": f"{seconds:.1f} s; peak RSS {peak:.0f} MiB; {out.strip()}"}, None))
            log(f"copy {users} users / {files} files: {seconds:.1f} s, peak RSS {peak:.0f} MiB")
    finally:
        stop(postgres)


def wait_established(port, count, timeout=15):
    """Waits until the server on `port` has at least `count` connections established."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True).stdout
        if len(out.splitlines()) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"fewer than {count} connections to port {port} after {timeout} s")


def fairness_benchmark(work):
    """One address (127.0.0.1) holds all the connections it can, sending nothing and reopening
    each one the server closes; a client on another address (127.0.0.2, 16 clients) must keep
    its throughput. Alternating rounds alone / beside the holder, and one round with the
    per-address limit off to show what it prevents."""
    holder_connections = 1100

    def run(extra, tag, with_holder):
        port = free_port()
        server = start_server(os.path.join(work, f"fair-{tag}"), port, extra=extra)
        holder = None
        try:
            if with_holder:
                holder = subprocess.Popen([os.path.join(TOOLS, "holder"), "--port", str(port), "--source", "127.0.0.1",
                                           "--connections", str(holder_connections), "--duration", "300"],
                                          stdout=subprocess.PIPE, text=True)
                # Until the holder holds what the server lets it (the limit, 256, or all slots).
                wait_established(port, 256)
            try:
                result = loadgen(port, "register", 16, f"fair{tag}", source="127.0.0.2")
            except subprocess.CalledProcessError:
                # Its set-up requests could not get a connection at all.
                result = {"rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": 0.0, "locked_out": True}
            if holder:
                holder.terminate()
                out = holder.communicate(timeout=30)[0]
                result["holder"] = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out)}
        finally:
            if holder and holder.poll() is None:
                holder.kill()
                holder.wait()
            stop(server)
        server.errors.seek(0)
        result["log_lines"] = len(server.errors.read().splitlines())
        return result

    alone, beside = [], []
    for round_ in range(2):
        alone.append(run((), f"alone{round_}", False))
        beside.append(run((), f"held{round_}", True))
    unprotected = run(("--max-connections-per-address", "0"), "unprotected", True)

    def mean(runs, note):
        return {"rps": statistics.mean(r["rps"] for r in runs), "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
                "p99_ms": max(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs), "note": note}

    base = mean(alone, f"{len(alone)} runs, mean (p99: worst run)")
    held = beside[-1]["holder"]
    protected = mean(beside, f"{len(beside)} runs; holder: {holder_connections} connections, "
                             f"{held['reopened']:.0f} reopened in the run, {held['cpu_cores']:.2f} cores; "
                             f"server log: {max(r['log_lines'] for r in beside)} lines per run")
    open_ = mean([unprotected], f"one run with --max-connections-per-address 0; server log: "
                                f"{unprotected['log_lines']} lines"
                                + ("; the client could not get a connection to start" if unprotected.get("locked_out")
                                   else ""))
    rows.append(("fairness", "register from 127.0.0.2, 16 clients, alone", base, None))
    rows.append(("fairness", "the same beside a holder on 127.0.0.1 (limit 256 per address)", protected, base))
    rows.append(("fairness", "the same, no per-address limit", open_, base))
    log(f"fairness: alone {base['rps']:.0f} rps; beside the holder {protected['rps']:.0f} rps "
        f"({protected['rps'] / base['rps']:.2f}), p99 {protected['p99_ms']:.1f} ms, errors {protected['errors']:.0f}; "
        f"unprotected {open_['rps']:.0f} rps, errors {open_['errors']:.0f}")


def wrk(url, script=None):
    args = ["wrk", "-t2", "-c64", f"-d{int(DURATION)}s", "--latency", url]
    if script:
        args[1:1] = ["-s", script]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(percent):
        match = re.search(rf"\s{percent}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    return {"rps": rps, "p50_ms": latency(50), "p99_ms": latency(99), "errors": errors}


def time_benchmark(work):
    if not shutil.which("wrk"):
        log("wrk not installed: skipping the time service (setup.sh installs it)")
        return
    port = free_port()
    service = subprocess.Popen([os.path.join(BIN, "p2p-time"), "--port", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_port(port)
    script = os.path.join(work, "soap.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "text/xml; charset=utf-8"\n'
                'wrk.body = [[<?xml version="1.0" encoding="UTF-8"?><soap:Envelope '
                'xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:tns="http://tests.python-zeep.org/">'
                '<soap:Body><tns:get_time/></soap:Body></soap:Envelope>]]\n')
    try:
        plain = wrk(f"http://127.0.0.1:{port}/time")
        soap = wrk(f"http://127.0.0.1:{port}/", script)
        rows.append(("time service", "GET /time, 64 connections", plain, None))
        rows.append(("time service", "SOAP get_time, 64 connections", soap, plain))
        log(f"time: GET /time {plain['rps']:.0f} rps, SOAP {soap['rps']:.0f} rps")
    finally:
        stop(service)


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make_file(path, mebibytes):
    block = bytearray(os.urandom(1 << 20))
    with open(path, "wb") as f:
        for index in range(mebibytes):
            block[0:8] = index.to_bytes(8, "little")
            f.write(block)


def read_until(process, wanted, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"client ended before {wanted!r}")
        if line.rstrip("\n") == wanted:
            return
        if line.startswith("c> ") and "FAIL" in line:
            raise RuntimeError(f"client printed {line.strip()}")
    raise RuntimeError(f"timed out waiting for {wanted!r}")


def get_file_benchmark(work):
    first_dir, second_dir = os.path.join(work, "first"), os.path.join(work, "second")
    os.makedirs(first_dir)
    os.makedirs(second_dir)
    source = os.path.join(first_dir, "big.bin")
    make_file(source, FILE_MIB)
    size = FILE_MIB << 20

    # Baseline: the same bytes through a loopback TCP socket into a file, with socat.
    port = free_port()
    receiver = subprocess.Popen(["socat", "-u", f"TCP-LISTEN:{port},reuseaddr",
                                 f"CREATE:{os.path.join(work, 'socat-copy.bin')}"])
    wait_for_listen(port)
    start = time.time()
    subprocess.run(["socat", "-u", f"FILE:{source}", f"TCP:127.0.0.1:{port}"], check=True)
    receiver.wait()
    plain_seconds = time.time() - start
    os.remove(os.path.join(work, "socat-copy.bin"))

    server_port, time_port = free_port(), free_port()
    server = start_server(os.path.join(work, "getfile-directory"), server_port)
    service = subprocess.Popen([os.path.join(BIN, "p2p-time"), "--port", str(time_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(time_port)
    client_args = [os.path.join(BIN, "p2p-client"), "-s", "127.0.0.1", "-p", str(server_port),
                   "--time-service", f"http://127.0.0.1:{time_port}"]
    clients = []

    def connected_client(folder, user):
        """A client started in `folder` with `user` registered and connected."""
        client = subprocess.Popen(client_args, cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1)
        clients.append(client)
        client.stdin.write(f"REGISTER {user}\nCONNECT {user}\n")
        client.stdin.flush()
        read_until(client, "c> CONNECT OK")
        return client

    try:
        serving = connected_client(first_dir, "u1")
        # A peer serves only what its user published.
        serving.stdin.write("PUBLISH big.bin bench file\n")
        serving.stdin.flush()
        read_until(serving, "c> PUBLISH OK")
        receiving = connected_client(second_dir, "u2")
        start = time.time()
        receiving.stdin.write("GET_FILE u1 big.bin copy.bin\n")
        receiving.stdin.flush()
        read_until(receiving, "c> GET_FILE OK")
        ours_seconds = time.time() - start
        serving_rss, receiving_rss = peak_rss_mib(serving.pid), peak_rss_mib(receiving.pid)
        if os.path.getsize(os.path.join(second_dir, "copy.bin")) != size:
            raise RuntimeError("copy has the wrong size")
    finally:
        for client in clients:
            client.stdin.close()
            client.wait(timeout=30)
        stop(server)
        stop(service)
    mib = size / (1 << 20)
    plain = {"rps": mib / plain_seconds, "note": f"{plain_seconds:.2f} s"}
    ours = {"rps": mib / ours_seconds,
            "note": f"{ours_seconds:.2f} s; peak RSS serving {serving_rss:.1f} MiB, receiving {receiving_rss:.1f} MiB"}
    rows.append(("GET_FILE", f"socat copy of {FILE_MIB} MiB over loopback (MiB/s)", plain, None))
    rows.append(("GET_FILE", f"GET_FILE of {FILE_MIB} MiB (MiB/s)", ours, plain))
    log(f"GET_FILE: {ours['rps']:.0f} MiB/s vs socat {plain['rps']:.0f} MiB/s; {ours['note']}")


def share_benchmark(work):
    """SHARE of a folder of SHARE_FILES files (100 subfolders) against a local p2p-server: the
    time until `c> SHARE OK` and the client's peak RSS, against the same server's own limit for
    PUBLISH (the C load generator, 16 clients, as many requests in flight as SHARE keeps)."""
    count = SHARE_FILES
    folder = os.path.join(work, "share-home", "library")
    for index in range(count):
        sub = os.path.join(folder, f"part{index // 100:03d}")
        if index % 100 == 0:
            os.makedirs(sub)
        with open(os.path.join(sub, f"file{index:05d}.txt"), "w") as f:
            f.write(f"file {index}\n")
    server_port, time_port = free_port(), free_port()
    server = start_server(os.path.join(work, "share-directory"), server_port)
    service = subprocess.Popen([os.path.join(BIN, "p2p-time"), "--port", str(time_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(time_port)
    client = None
    try:
        base = loadgen(server_port, "publish", 16, "share-base")
        client = subprocess.Popen([os.path.join(BIN, "p2p-client"), "-s", "127.0.0.1", "-p", str(server_port),
                                   "--time-service", f"http://127.0.0.1:{time_port}"],
                                  cwd=os.path.dirname(folder), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1)
        client.stdin.write("REGISTER sharer\nCONNECT sharer\n")
        client.stdin.flush()
        read_until(client, "c> CONNECT OK")
        start = time.time()
        client.stdin.write("SHARE library\n")
        client.stdin.flush()
        read_until(client, "c> SHARE OK", timeout=600)
        seconds = time.time() - start
        rss = peak_rss_mib(client.pid)
        client.stdin.write("SHARED\n")
        client.stdin.flush()
        read_until(client, "c> SHARED OK")
        summary = client.stdout.readline().strip()
        if f": {count} files published" not in summary:
            raise RuntimeError(f"SHARED says {summary!r}")
    finally:
        if client:
            client.stdin.close()
            client.wait(timeout=60)
        stop(server)
        stop(service)
    result = {"rps": count / seconds, "note": f"{seconds:.1f} s for {count} files; client peak RSS {rss:.1f} MiB"}
    rows.append(("SHARE", "PUBLISH, 16 clients (load generator): the server's limit (req/s)", base, None))
    rows.append(("SHARE", f"SHARE of a folder of {count} files (files/s)", result, base))
    log(f"SHARE: {count} files in {seconds:.1f} s ({result['rps']:.0f}/s vs PUBLISH limit {base['rps']:.0f}/s), "
        f"peak RSS {rss:.1f} MiB")


def peer_extension_benchmark(work):
    """Downloads between peers of ours (size, digest, ranges): a verified single-source download
    against plain GET_FILE (`--plain-get-file`) of the same file from the same owner, which has
    hashed it already, alternating, two rounds each; a download cut at about 60% and resumed
    (what the second attempt fetched again, against the file's size); and one download from
    three owners each capped at R, against one owner capped at R, then again with one of the
    three killed mid-way."""
    owners_dir = os.path.join(work, "ext")
    folders = {name: os.path.join(owners_dir, name) for name in ("o1", "o2", "o3", "recv", "recvplain")}
    for folder in folders.values():
        os.makedirs(folder)
    big = os.path.join(folders["o1"], "big.bin")
    make_file(big, FILE_MIB)
    size = FILE_MIB << 20
    small_mib = min(FILE_MIB, 256)
    make_file(os.path.join(folders["o1"], "part.bin"), small_mib)
    for name in ("o2", "o3"):
        for file in ("big.bin", "part.bin"):
            os.link(os.path.join(folders["o1"], file), os.path.join(folders[name], file))
    server_port, time_port = free_port(), free_port()
    server = start_server(os.path.join(owners_dir, "directory"), server_port)
    service = subprocess.Popen([os.path.join(BIN, "p2p-time"), "--port", str(time_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(time_port)
    clients = []

    def start_client(folder, commands, wanted, extra=()):
        return start_scripted_client(clients, server_port, time_port, folder,
                                     os.path.join(owners_dir, f"client-{len(clients)}.err"), commands, wanted, extra)

    def owner(folder, user, extra=()):
        return start_client(folders[folder], [f"REGISTER {user}", f"CONNECT {user}", "PUBLISH big.bin data",
                                               "PUBLISH part.bin data"], "c> PUBLISH OK", extra)

    def get(client, owners, name, local):
        start = time.time()
        client.stdin.write(f"GET_FILE {owners} {name} {local}\n")
        client.stdin.flush()
        read_until(client, "c> GET_FILE OK", timeout=600)
        return time.time() - start

    def kill(client):
        client.kill()
        client.wait()

    try:
        # Overhead, on a file the owner has hashed already (the warm-up download hashes it).
        owner("o1", "plain1")
        receiver = start_client(folders["recv"], ["REGISTER r1", "CONNECT r1"], "c> CONNECT OK")
        plain = start_client(folders["recvplain"], ["REGISTER r2", "CONNECT r2"], "c> CONNECT OK",
                             ["--plain-get-file"])
        get(receiver, "plain1", "big.bin", "warm.bin")
        os.remove(os.path.join(folders["recv"], "warm.bin"))
        times = {"ours": [], "plain": []}
        for round_ in range(2):
            for kind, client, folder in (("plain", plain, "recvplain"), ("ours", receiver, "recv")):
                times[kind].append(get(client, "plain1", "big.bin", "copy.bin"))
                os.remove(os.path.join(folders[folder], "copy.bin"))
        mib = size / (1 << 20)
        plain_result = {"rps": mib / statistics.mean(times["plain"]),
                        "note": f"plain GET_FILE (--plain-get-file), {FILE_MIB} MiB, mean of 2"}
        ours_result = {"rps": mib / statistics.mean(times["ours"]),
                       "note": f"size, SHA-256 and 4 MiB chunks, verified; peak RSS receiving "
                               f"{peak_rss_mib(receiver.pid):.1f} MiB"}
        rows.append(("peer extension", f"plain GET_FILE of {FILE_MIB} MiB (MiB/s)", plain_result, None))
        rows.append(("peer extension", f"verified GET_FILE of {FILE_MIB} MiB (MiB/s)", ours_result, plain_result))

        # Resume: cut at about 60% (the owner killed), then continued from a new owner process.
        capped = owner("o2", "cut1", ["--upload-limit", "200M"])
        record = os.path.join(folders["recv"], ".resume.bin.p2p-partial.info")
        receiver.stdin.write("GET_FILE cut1 big.bin resume.bin\n")
        receiver.stdin.flush()
        chunks = (size + (4 << 20) - 1) // (4 << 20)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                done = [x for x in open(record).read().split("done ")[1].strip().split(",") if x]
            except (OSError, IndexError):
                done = []
            if len(done) >= 0.6 * chunks:
                break
            time.sleep(0.02)
        kill(capped)
        read_until_fail = time.time() + 60
        while time.time() < read_until_fail:
            line = receiver.stdout.readline()
            if line.startswith("c> GET_FILE"):
                break
        start_client(folders["o2"], ["DISCONNECT cut1", "CONNECT cut1"], "c> CONNECT OK")
        get(receiver, "cut1", "big.bin", "resume.bin")
        receiver.errors.seek(0)
        kept = [int(m) for m in re.findall(r"continuing big\.bin: (\d+) of", receiver.errors.read())]
        if not kept:
            raise RuntimeError("the second attempt did not continue the first")
        again = size - kept[-1]
        rows.append(("peer extension", f"GET_FILE of {FILE_MIB} MiB cut at {kept[-1] / size:.0%}, resumed: "
                     "share fetched again (plain)", {"rps": again / size, "plain": True,
                                                     "note": f"{again >> 20} MiB of {FILE_MIB} fetched again "
                                                             f"(target at most 0.45)"}, None))

        # Several sources, each capped at R.
        rate = "40M"
        rate_mib = 40
        singles = [owner(name, f"cap{name}", ["--upload-limit", rate]) for name in ("o1", "o2", "o3")]
        # Each owner hashes the file at the first request for it: not part of what is measured.
        get(receiver, "capo1,capo2,capo3", "part.bin", "warm3.bin")
        os.remove(os.path.join(folders["recv"], "warm3.bin"))
        one = get(receiver, "capo1", "part.bin", "one.bin")
        three = get(receiver, "capo1,capo2,capo3", "part.bin", "three.bin")
        os.remove(os.path.join(folders["recv"], "one.bin"))
        os.remove(os.path.join(folders["recv"], "three.bin"))
        single_result = {"rps": small_mib / one, "note": f"one owner capped at R = {rate_mib} MiB/s"}
        three_result = {"rps": small_mib / three, "note": f"{small_mib / three / rate_mib:.2f} R (target 2.5 R)"}
        rows.append(("peer extension", f"GET_FILE of {small_mib} MiB from one owner at R (MiB/s)", single_result, None))
        rows.append(("peer extension", f"GET_FILE of {small_mib} MiB from three owners at R (MiB/s)", three_result,
                     single_result))
        receiver.stdin.write("GET_FILE capo1,capo2,capo3 part.bin killed.bin\n")
        receiver.stdin.flush()
        start = time.time()
        time.sleep(three * 0.3)
        kill(singles[1])
        read_until(receiver, "c> GET_FILE OK", timeout=600)
        killed = time.time() - start
        rows.append(("peer extension", f"GET_FILE of {small_mib} MiB from three owners, one killed at 30% (MiB/s)",
                     {"rps": small_mib / killed, "note": "completed and verified"}, single_result))
        log(f"peer extension: verified {ours_result['rps']:.0f} vs plain {plain_result['rps']:.0f} MiB/s; "
            f"resume fetched {again / size:.2f} again; three owners {small_mib / three / rate_mib:.2f} R, "
            f"one killed {small_mib / killed / rate_mib:.2f} R")
    finally:
        for client in clients:
            if client.poll() is None:
                client.stdin.close()
                try:
                    client.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    client.kill()
        stop(server)
        stop(service)


def wait_for_listen(port, timeout=10):
    """Waits until something listens on port, without connecting (socat would take the connection)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["ss", "-ltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        if f":{port}" in out:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class NatWorld:
    """The simulated internet of scripts/nat-demo.sh under `prefix` (home routers that give
    every connection a new port when `symmetric`), the programs run in it, stopped by close()."""

    demo = os.path.join(ROOT, "scripts", "nat-demo.sh")

    def __init__(self, prefix, symmetric=False):
        self.prefix = prefix
        self.processes = []
        self.srv = ["ip", "netns", "exec", f"{prefix}-srv"]
        subprocess.run([self.demo, "up", prefix] + (["symmetric"] if symmetric else []), check=True,
                       stdout=subprocess.DEVNULL)

    def inside(self, ns, *command, **kwargs):
        process = subprocess.Popen(["ip", "netns", "exec", f"{self.prefix}-{ns}", *command], **kwargs)
        self.processes.append(process)
        return process

    def client(self, ns, folder, user, port=4242):
        """A p2p-client shell for `user` in namespace `ns`, registered and connected."""
        os.makedirs(folder, exist_ok=True)
        process = self.inside(ns, os.path.join(BIN, "p2p-client"), "-s", "198.18.0.2", "-p", str(port),
                              "--time-service", "http://198.18.0.2:8000", cwd=folder, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        for command in (f"REGISTER {user}", f"CONNECT {user}"):
            if shell_result(process, command) != f"c> {command.split()[0]} OK":
                raise RuntimeError(f"{user}: {command} failed")
        return process

    def start_server(self, work, name, *arguments):
        """The time service and one directory server on 4242 on the server host."""
        self.inside("srv", os.path.join(BIN, "p2p-time"), "--host", "0.0.0.0", stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
        self.inside("srv", os.path.join(BIN, "p2p-server"), "--host", "0.0.0.0", "--no-oplog", "--data-dir",
                    os.path.join(work, name), *arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(4242, inside=self.srv)

    def start_cluster(self, work, name, *arguments):
        """PostgreSQL, three servers (4250-4252, --proxy-protocol) and HAProxy on the server
        host; returns the servers' log files and HAProxy's port."""
        database, _, url = start_postgres(work, inside=self.srv)
        self.processes.append(database)
        logs = []
        for index in range(3):
            port = 4250 + index
            logs.append(os.path.join(work, f"{name}-{index}.log"))
            self.inside("srv", os.path.join(BIN, "p2p-server"), "--host", "127.0.0.1", "-p", str(port),
                        "--no-oplog", "--proxy-protocol", "--store", url, "--data-dir",
                        os.path.join(work, f"{name}-{index}"), *arguments, stdout=open(logs[-1], "w"),
                        stderr=subprocess.STDOUT)
            wait_port(port, inside=self.srv)
        balancer, _ = start_balancer(work, [4250, 4251, 4252], f"{name}-haproxy", bind="0.0.0.0", inside=self.srv)
        self.processes.append(balancer)
        front = int(re.search(r"bind 0\.0\.0\.0:(\d+)", open(os.path.join(work, f"{name}-haproxy.cfg")).read())[1])
        return logs, front

    @staticmethod
    def control_server(logs, user, process=None, avoid=None):
        """The server (index into `logs`) holding `user`'s control connection; with `avoid`, the
        user's shell (`process`) connects again until it is on another server than that one
        (HAProxy takes turns)."""
        def counts():
            return [open(log).read().count(f"s> CONTROL FROM {user}\n") for log in logs]
        before = [0] * len(logs)
        while True:
            wait_for(f"{user}'s control connection", lambda: counts() != before, timeout=20)
            now = counts()
            server = next(i for i in range(len(logs)) if now[i] > before[i])
            if avoid is None or server != avoid:
                return server
            for command in (f"DISCONNECT {user}", f"CONNECT {user}"):
                shell_result(process, command)
            before = now

    def close(self):
        for process in self.processes:
            if process.stdin:
                process.stdin.close()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        subprocess.run([self.demo, "down", self.prefix], check=False)


def shell_result(process, command):
    """Types `command` into a p2p-client shell; its result line (from the next prompt)."""
    process.stdin.write(command + "\n")
    process.stdin.flush()
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"client ended during {command!r}")
        if line.startswith("c> "):
            return line.strip()


def nat_benchmark(work):
    """Users behind NAT, in the simulated internet of scripts/nat-demo.sh: the throughput of a
    reversed and of a punched GET_FILE against a direct one through the same kind of router;
    100 punched downloads of a small file on one server and 100 through a cluster (three
    servers sharing PostgreSQL behind HAProxy on the server host, the two users' control
    connections on different servers), alternating: how many succeed and how long each takes.
    Then relays between symmetric NATs (nat_relay_benchmark)."""
    if os.geteuid() != 0 or not shutil.which("nft"):
        log("NAT: skipped (needs root and nftables)")
        return
    world = NatWorld(f"p2pb{os.getpid() % 100000}")
    result = shell_result
    try:
        world.start_server(work, "nat-directory")
        mib = min(FILE_MIB, 512)
        folders = {name: os.path.join(work, f"nat-{name}") for name in ("pub", "h1", "h2")}
        os.makedirs(folders["pub"])
        os.makedirs(folders["h1"])
        make_file(os.path.join(folders["pub"], "big.bin"), mib)
        make_file(os.path.join(folders["h1"], "big.bin"), mib)
        with open(os.path.join(folders["h1"], "small.txt"), "w") as f:
            f.write("a small file\n")
        public = world.client("pub", folders["pub"], "pub")
        home1 = world.client("h1", folders["h1"], "home1")
        home2 = world.client("h2", folders["h2"], "home2")
        for process, command in ((public, "PUBLISH big.bin bench"), (home1, "PUBLISH big.bin bench"),
                                 (home1, "PUBLISH small.txt note")):
            if not result(process, command).endswith("OK"):
                raise RuntimeError(command)
        paths = {
            # A NAT'd downloader from a public owner: the direct path, through one router as the others.
            "direct": (home2, "pub"),
            "reversed": (public, "home1"),
            "punched": (home2, "home1"),
        }
        seconds = {name: [] for name in paths}
        where = {public: folders["pub"], home2: folders["h2"]}
        for round_ in range(5):
            for name, (downloader, owner) in paths.items():
                start = time.time()
                line = result(downloader, f"GET_FILE {owner} big.bin copy-{name}.bin")
                if line != "c> GET_FILE OK":
                    raise RuntimeError(f"{name}: {line}")
                seconds[name].append(time.time() - start)
                os.remove(os.path.join(where[downloader], f"copy-{name}.bin"))
        # The cluster, on the same server host.
        logs, front = world.start_cluster(work, "nat-cluster")
        owner_c = world.client("h1", os.path.join(work, "nat-h1c"), "home1c", port=front)
        shutil.copy(os.path.join(folders["h1"], "small.txt"), os.path.join(work, "nat-h1c", "small.txt"))
        if result(owner_c, "PUBLISH small.txt note") != "c> PUBLISH OK":
            raise RuntimeError("PUBLISH in the cluster")
        owner_server = world.control_server(logs, "home1c")
        downloader_c = world.client("h2", os.path.join(work, "nat-h2c"), "home2c", port=front)
        downloader_server = world.control_server(logs, "home2c", downloader_c, avoid=owner_server)

        tries = 100
        punched = {"server": 0, "cluster": 0}
        punch_ms = {"server": [], "cluster": []}
        slow = {"server": [], "cluster": []}  # which tries took over 500 ms
        pairs = {"server": (home2, "home1"), "cluster": (downloader_c, "home1c")}
        for attempt in range(tries):
            # A GET_FILE punches twice (its info, its range), and a session may ask for 2 a
            # second after a burst (docs/PROTOCOL.md, "Bounds"): one GET_FILE a second per pair.
            started = time.time()
            order = ("server", "cluster") if attempt % 2 == 0 else ("cluster", "server")
            for name in order:
                downloader, owner = pairs[name]
                start = time.time()
                if result(downloader, f"GET_FILE {owner} small.txt small-{attempt}.txt") == "c> GET_FILE OK":
                    punched[name] += 1
                    punch_ms[name].append((time.time() - start) * 1000)
                    if punch_ms[name][-1] > 500:
                        slow[name].append(attempt + 1)
            time.sleep(max(0.0, started + 1.05 - time.time()))
    finally:
        world.close()
    rates = {name: {"rps": mib / statistics.median(values),
                    "note": "median of 5: " + ", ".join(f"{v:.2f} s" for v in values)} for name, values in seconds.items()}
    rows.append(("NAT", f"GET_FILE of {mib} MiB, direct through one NAT (MiB/s)", rates["direct"], None))
    rows.append(("NAT", f"GET_FILE of {mib} MiB, reversed (owner behind NAT) (MiB/s)", rates["reversed"], rates["direct"]))
    rows.append(("NAT", f"GET_FILE of {mib} MiB, punched (both behind NAT) (MiB/s)", rates["punched"], rates["direct"]))
    punch = {}
    for name in ("server", "cluster"):
        values = sorted(punch_ms[name]) or [float("nan")]
        punch[name] = {"rps": 1000 / statistics.median(values), "p50_ms": statistics.median(values),
                       "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))],
                       "errors": tries - punched[name],
                       "note": f"{punched[name]} of {tries} punched, {len(slow[name])} over 500 ms{' (tries ' + ', '.join(map(str, slow[name])) + ')' if slow[name] else ''}"}
    punch["cluster"]["note"] += (f"; owner and downloader on servers {owner_server + 1} and {downloader_server + 1} "
                                 f"of 3; extra time p50 {punch['cluster']['p50_ms'] - punch['server']['p50_ms']:+.1f} ms")
    rows.append(("NAT", "punched GET_FILE of a small file, one server (per s)", punch["server"], None))
    rows.append(("NAT", "punched GET_FILE of a small file, 3 servers behind HAProxy, users on two of them (per s)",
                 punch["cluster"], punch["server"]))
    log(f"NAT: direct {rates['direct']['rps']:.0f}, reversed {rates['reversed']['rps']:.0f}, "
        f"punched {rates['punched']['rps']:.0f} MiB/s; punches {punched['server']}/{tries} on one server "
        f"(p50 {punch['server']['p50_ms']:.1f} ms), {punched['cluster']}/{tries} in the cluster "
        f"(p50 {punch['cluster']['p50_ms']:.1f} ms)")


def nat_relay_benchmark(work):
    """Relayed GET_FILEs between users behind symmetric NATs (no punch works) against the relay
    limit: on one server, through a cluster of three behind HAProxy (the two users' control
    connections on different servers), and two relays at once in the cluster, whose rates
    together are to hold to the one limit wherever they are paired."""
    limit_mib = 8
    world = NatWorld(f"p2pr{os.getpid() % 100000}", symmetric=True)
    relay = ["--relay-limit", f"{limit_mib}M"]
    mib = 48
    try:
        world.start_server(work, "relay-directory", *relay)
        logs, front = world.start_cluster(work, "relay-cluster", *relay)
        owners = {}
        for name, port in (("o", 4242), ("co", front), ("co2", front)):
            folder = os.path.join(work, f"relay-{name}")
            os.makedirs(folder)
            make_file(os.path.join(folder, "big.bin"), mib)
            owners[name] = world.client("h1", folder, name, port=port)
            if shell_result(owners[name], "PUBLISH big.bin relayed") != "c> PUBLISH OK":
                raise RuntimeError(f"{name}: PUBLISH")
        downloaders = {name: world.client("h2", os.path.join(work, f"relay-{name}"), name, port=port)
                       for name, port in (("d", 4242), ("cd", front), ("cd2", front))}
        for owner, downloader in (("co", "cd"), ("co2", "cd2")):
            apart = world.control_server(logs, owner)
            world.control_server(logs, downloader, downloaders[downloader], avoid=apart)

        def get(downloader, owner, copy):
            line = shell_result(downloaders[downloader], f"GET_FILE {owner} big.bin {copy}")
            if line != "c> GET_FILE OK":
                raise RuntimeError(f"{downloader} from {owner}: {line}")
            os.remove(os.path.join(work, f"relay-{downloader}", copy))

        # Each downloader's first GET_FILE from an owner tries a punch first (for seconds, in
        # vain); it then goes straight to the relay for ten minutes: the first are left out.
        seconds = {"server": [], "cluster": []}
        for round_ in range(4):
            for name, (downloader, owner) in (("server", ("d", "o")), ("cluster", ("cd", "co"))):
                start = time.time()
                get(downloader, owner, f"copy-{round_}.bin")
                if round_ > 0:
                    seconds[name].append(time.time() - start)
        get("cd2", "co2", "first.bin")

        def relayed_counts():
            return [open(log).read().count("transfer relayed (token") for log in logs]
        before = relayed_counts()
        start = time.time()
        ends = []

        def timed(*pair):
            get(*pair)
            ends.append(time.time() - start)
        together = [threading.Thread(target=timed, args=pair) for pair in (("cd", "co", "both.bin"),
                                                                            ("cd2", "co2", "both.bin"))]
        for thread in together:
            thread.start()
        for thread in together:
            thread.join()
        both_seconds = max(ends)
        paired = [after - earlier for after, earlier in zip(relayed_counts(), before)]
    finally:
        world.close()
    limit = {"rps": limit_mib, "note": "--relay-limit on each server; the relays' bound"}
    rows.append(("NAT", "relay limit (MiB/s)", limit, None))
    for name, what in (("server", "one server"), ("cluster", "3 servers behind HAProxy, users on two of them")):
        values = seconds[name]
        rate = {"rps": mib / statistics.median(values),
                "note": f"{mib} MiB, median of 3 (after a first that tried a punch): "
                        + ", ".join(f"{v:.2f} s" for v in values)}
        rows.append(("NAT", f"relayed GET_FILE between symmetric NATs, {what} (MiB/s)", rate, limit))
    both = {"rps": 2 * mib / both_seconds,
            "note": f"two {mib} MiB GET_FILEs at once, done after " + " and ".join(f"{e:.2f}" for e in sorted(ends))
                    + f" s; relays paired by each server (a GET_FILE relays two connections) {paired}"}
    rows.append(("NAT", "two relayed GET_FILEs at once in the cluster, together (MiB/s)", both, limit))
    log(f"NAT relay: limit {limit_mib} MiB/s; one server {mib / statistics.median(seconds['server']):.2f}, "
        f"cluster {mib / statistics.median(seconds['cluster']):.2f}, two at once {both['rps']:.2f} MiB/s")


def print_table():
    print()
    print("| section | measurement | throughput | p50 ms | p99 ms | errors | ratio to baseline | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for section, what, result, base in rows:
        ratio = f"{result['rps'] / base['rps']:.2f}" if base else "" if result.get("plain") else "baseline"
        p50 = f"{result['p50_ms']:.2f}" if "p50_ms" in result else ""
        p99 = f"{result['p99_ms']:.2f}" if "p99_ms" in result else ""
        errors = f"{result['errors']:.0f}" if "errors" in result else ""
        value = f"{result['rps']:.2f}" if result.get("plain") else f"{result['rps']:.0f}"
        print(f"| {section} | {what} | {value} | {p50} | {p99} | {errors} | {ratio} | "
              f"{result.get('note', '')} |")


def keyed_session(port, user, date):
    """Opens a keyed session for `user` as our client does (docs/PROTOCOL.md, "Keys"); returns
    (session, key, the public key's text, the milliseconds IDENTIFY took)."""
    import base64
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    identity = Ed25519PrivateKey.generate()
    public = base64.b64encode(identity.public_key().public_bytes(*raw)).decode()
    agreement = X25519PrivateKey.generate()
    mine = base64.b64encode(agreement.public_key().public_bytes(*raw)).decode()
    signed = b"".join(f.encode() + b"\0" for f in ["p2p identify v1", user, public, mine, date])
    signature = base64.b64encode(identity.sign(signed)).decode()
    reply, ms = request_fields(port, "IDENTIFY", date, user, public, mine, signature)
    assert reply[0] == b"0", reply
    session, theirs = reply[1].decode(), base64.b64decode(reply[2])
    secret = agreement.exchange(X25519PublicKey.from_public_bytes(theirs))
    info = b"p2p session v1" + b"\0" + user.encode() + b"\0" + public.encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
    return session, key, public, ms


def keyed_fields(session, key, counter, *fields):
    """A keyed request's fields: the proof, then the request."""
    import base64
    import hmac
    covered = b"".join(f.encode() + b"\0" for f in ["p2p keyed request v1", session, str(counter), *fields])
    mac = base64.b64encode(hmac.new(key, covered, "sha256").digest()).decode()
    return ["KEYED", session, str(counter), mac, *fields]


def keys_benchmark(work):
    """CONNECT and DISCONNECT of a keyed user (a MAC each, the session opened once) against the
    same of an unkeyed one, one request at a time, in alternating rounds on one server."""
    log("keys: CONNECT with its proof against a plain CONNECT")
    port = free_port()
    server = start_server(os.path.join(work, "keys"), port)
    try:
        date = "07/12/2026 10:00:00"
        request_fields(port, "REGISTER", date, "plain")
        session, key, public, identify_ms = keyed_session(port, "keyed", date)
        counter = 1
        reply, _ = request_fields(port, *keyed_fields(session, key, counter, "REGISTER", date, "keyed"))
        assert reply[:2] == [b"0", b"0"], reply
        identifies = [keyed_session(port, f"other{n}", date)[3] for n in range(200)]
        times = {"plain": [], "keyed": []}
        for _ in range(10):
            for _ in range(200):
                _, ms = request_fields(port, "CONNECT", date, "plain", "5000")
                times["plain"].append(ms)
                request_fields(port, "DISCONNECT", date, "plain")
            for _ in range(200):
                counter += 1
                reply, ms = request_fields(port, *keyed_fields(session, key, counter, "CONNECT", date, "keyed", "5000"))
                assert reply[:2] == [b"0", b"0"], reply
                times["keyed"].append(ms)
                counter += 1
                request_fields(port, *keyed_fields(session, key, counter, "DISCONNECT", date, "keyed"))
        def summary(values):
            ordered = sorted(values)
            p50 = statistics.median(ordered)
            return {"rps": 1000 / p50, "p50_ms": p50, "p99_ms": ordered[int(len(ordered) * 0.99) - 1]}
        plain, keyed = summary(times["plain"]), summary(times["keyed"])
        plain["note"] = "2,000 CONNECTs of an unkeyed user, one at a time; throughput = 1 / p50"
        keyed["note"] = (f"the same keyed (a MAC each); {keyed['p50_ms'] - plain['p50_ms']:+.3f} ms at the median; "
                         f"IDENTIFY (once per session, a signature checked) p50 {statistics.median(identifies):.2f} ms")
        rows.append(("keys", "CONNECT, plain (baseline)", plain, None))
        rows.append(("keys", "CONNECT, keyed", keyed, plain))
    finally:
        stop(server)
    keyed_mixed_benchmark(work)


def keyed_mixed_benchmark(work, clients=16, rounds=4):
    """The directory's mixed load (40% LIST_CONTENT, 20% LIST_USERS, 20% PUBLISH, 20% REGISTER)
    from clients whose users are bound to keys (every PUBLISH keyed: a MAC, its counter checked;
    each client's session opened once, before the run) against the same load from unkeyed
    clients, alternating on one server (which goes first alternates too, and each run's users
    are disconnected after it, so that LIST_USERS lists as many in both). REGISTERs of new names
    stay plain in both: a new name's keyed REGISTER costs one IDENTIFY, measured above."""
    log(f"keys: the mixed load from keyed clients against unkeyed ones, {clients} clients")
    port = free_port()
    server = start_server(os.path.join(work, "keys-mixed"), port)
    try:
        date = "07/12/2026 10:00:00"
        results = {"plain": [], "keyed": []}

        def plain_run(round_):
            tag = f"pm{round_}"
            results["plain"].append(loadgen(port, "mixed", clients, tag))
            for index in range(clients):
                request_fields(port, "DISCONNECT", date, f"{tag}-c{index}")

        def keyed_run(round_):
            tag = f"km{round_}"
            sessions = os.path.join(work, f"sessions-{tag}")
            opened = []
            with open(sessions, "w") as out:
                for index in range(clients):
                    user = f"{tag}-c{index}"
                    session, key, _, _ = keyed_session(port, user, date)
                    for counter, fields in ((1, ("REGISTER", date, user)), (2, ("CONNECT", date, user, "4000"))):
                        reply, _ = request_fields(port, *keyed_fields(session, key, counter, *fields))
                        assert reply[:2] == [b"0", b"0"], (fields, reply)
                    out.write(f"{session} {key.hex()}\n")
                    opened.append((user, session, key))
            results["keyed"].append(loadgen(port, "mixed", clients, tag, sessions=sessions))
            for user, session, key in opened:
                # Above every counter the run used.
                reply, _ = request_fields(port, *keyed_fields(session, key, 10**12, "DISCONNECT", date, user))
                assert reply[:2] == [b"0", b"0"], reply

        for round_ in range(rounds):
            for run in ((plain_run, keyed_run) if round_ % 2 == 0 else (keyed_run, plain_run)):
                run(round_)
        def summary(kind):
            runs = results[kind]
            result = {"rps": statistics.median(r["rps"] for r in runs),
                      "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                      "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                      "errors": sum(r["errors"] for r in runs)}
            result["note"] = (f"{clients} clients, median of {rounds} alternating runs; the load generator "
                              f"{max(r['cpu_cores'] for r in runs):.2f} cores busy at most")
            return result
        plain, keyed = summary("plain"), summary("keyed")
        rows.append(("keys", "mixed load, unkeyed clients (baseline)", plain, None))
        rows.append(("keys", "mixed load, keyed clients (every PUBLISH keyed)", keyed, plain))
        log(f"keys: mixed {keyed['rps']:.0f} req/s keyed against {plain['rps']:.0f} unkeyed")
    finally:
        stop(server)


def tls_benchmark(work):
    """GET_FILE between peers of ours over TLS (an owner bound to a key) against the same from an
    owner bound to none (`--no-identity`: plain, sendfile), one receiver, the same file (hashed by
    both owners already), alternating, three rounds each; with the CPU both ends used per GiB."""
    log("tls: a pinned, encrypted download against a plain one")
    base = os.path.join(work, "tls")
    folders = {name: os.path.join(base, name) for name in ("keyed", "plain", "recv")}
    for folder in folders.values():
        os.makedirs(folder)
    mib = min(FILE_MIB, 1024)
    make_file(os.path.join(folders["keyed"], "big.bin"), mib)
    os.link(os.path.join(folders["keyed"], "big.bin"), os.path.join(folders["plain"], "big.bin"))
    server_port, time_port = free_port(), free_port()
    server = start_server(os.path.join(base, "directory"), server_port)
    service = subprocess.Popen([os.path.join(BIN, "p2p-time"), "--port", str(time_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(time_port)
    clients = []

    def start_client(name, commands, wanted, extra=()):
        # Each client its own identity and state folders.
        environment = dict(os.environ, XDG_CONFIG_HOME=os.path.join(base, f"{name}.config"),
                           XDG_STATE_HOME=os.path.join(base, f"{name}.state"))
        return start_scripted_client(clients, server_port, time_port, folders[name],
                                     os.path.join(base, f"{name}.err"), commands, wanted, extra, environment)

    try:
        owners = {
            "keyed": start_client("keyed", ["REGISTER keyedowner", "CONNECT keyedowner", "PUBLISH big.bin data"],
                                  "c> PUBLISH OK"),
            "plain": start_client("plain", ["REGISTER plainowner", "CONNECT plainowner", "PUBLISH big.bin data"],
                                  "c> PUBLISH OK", ["--no-identity"]),
        }
        receiver = start_client("recv", ["REGISTER receiver", "CONNECT receiver"], "c> CONNECT OK")
        copy = os.path.join(folders["recv"], "copy.bin")
        results = {"keyed": [], "plain": []}
        for round_ in range(4):
            for kind in ("plain", "keyed"):
                pids = {"owner": owners[kind].pid, "receiver": receiver.pid}
                cpu_before = {who: cpu_seconds([pid]) for who, pid in pids.items()}
                start = time.time()
                receiver.stdin.write(f"GET_FILE {kind}owner big.bin copy.bin\n")
                receiver.stdin.flush()
                read_until(receiver, "c> GET_FILE OK", timeout=600)
                seconds = time.time() - start
                cpu = {who: cpu_seconds([pid]) - cpu_before[who] for who, pid in pids.items()}
                os.remove(copy)
                if round_ > 0:  # the first round hashes the file at each owner
                    results[kind].append((seconds, cpu))
        gib = mib / 1024

        def summary(kind):
            runs = results[kind]
            rate = mib / statistics.mean(seconds for seconds, _ in runs)
            owner_cpu = statistics.mean(cpu["owner"] for _, cpu in runs) / gib
            receiver_cpu = statistics.mean(cpu["receiver"] for _, cpu in runs) / gib
            return {"rps": rate, "note": f"{mib} MiB, mean of 3; CPU per GiB: owner {owner_cpu:.2f} s, "
                                         f"receiver {receiver_cpu:.2f} s"}
        plain, keyed = summary("plain"), summary("keyed")
        plain["note"] = "owner bound to no key (plain, sendfile); " + plain["note"]
        keyed["note"] = "TLS 1.3 pinned to the owner's key; " + keyed["note"]
        rows.append(("tls", f"GET_FILE of {mib} MiB in clear (MiB/s)", plain, None))
        rows.append(("tls", f"GET_FILE of {mib} MiB over TLS (MiB/s)", keyed, plain))
        log(f"tls: {keyed['rps']:.0f} MiB/s vs plain {plain['rps']:.0f} MiB/s; {keyed['note']} | {plain['note']}")
    finally:
        for client in clients:
            stop(client)
        stop(service)
        stop(server)


def main():
    only = sys.argv[1:] or ["directory", "sqlite", "fairness", "large", "peercheck", "sharedchecks", "web", "oplog", "time", "getfile", "share", "peers",
                            "postgres", "pgsearch", "failover", "copy", "nat", "keys", "tls"]
    build_tools()
    work = tempfile.mkdtemp(prefix="p2p-bench-")
    try:
        if "directory" in only:
            directory_benchmark(work)
        if "sqlite" in only:
            sqlite_commit_benchmark(work)
        if "fairness" in only:
            fairness_benchmark(work)
        if "large" in only:
            large_directory_benchmark(work)
        if "peercheck" in only:
            answering_peer_check_benchmark(work)
        if "sharedchecks" in only:
            shared_peer_check_benchmark(work)
        if "web" in only:
            web_benchmark(work)
        if "oplog" in only:
            oplog_benchmark(work)
        if "time" in only:
            time_benchmark(work)
        if "getfile" in only:
            get_file_benchmark(work)
        if "share" in only:
            share_benchmark(work)
        if "peers" in only:
            peer_extension_benchmark(work)
        if "postgres" in only:
            postgres_benchmark(work)
        if "pgsearch" in only:
            postgres_search_benchmark(work)
        if "failover" in only:
            failover_benchmark(work)
        if "copy" in only:
            copy_benchmark(work)
        if "nat" in only:
            nat_benchmark(work)
        if ("nat" in only or "relay" in only) and os.geteuid() == 0 and shutil.which("nft"):
            nat_relay_benchmark(work)
        if "keys" in only:
            keys_benchmark(work)
        if "tls" in only:
            tls_benchmark(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table()


if __name__ == "__main__":
    main()
