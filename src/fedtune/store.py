"""The run store: one SQLite file per workspace, plus safetensors checkpoints beside it.

Tables: ``runs`` (resolved config, status, result), ``rounds``, ``node_metrics`` (the energy
and traffic ledger: one row per node, round and phase), ``node_evals`` and ``checkpoints``.
Each round is committed in one transaction (WAL journal), so a run killed at any moment
leaves a readable store whose last complete round is intact; such a run shows as
``incomplete``. Checkpoints are written to a temporary file and renamed into place.

Integrity: every state file and checkpoint is recorded with the SHA-256 of its bytes, and
verified before it is used (``--resume``, :meth:`RunStore.load_checkpoint`); a resume whose
newest state is damaged falls back to the one before it (two are kept). Storage faults (a full
disk, an unreadable file, a damaged database) are :class:`StoreError` lines naming the file
and the fix; nothing committed before is touched by them. Stores written before checksums
existed gain the columns on open and their old files are used unchecked.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
import socket
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .store_files import database_errors, read_verified, write_safetensors
from .types import NodeRoundRecord, RoundRecord, RunResult

if TYPE_CHECKING:  # torch is imported by what runs, not to list runs
    import torch

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL, finished REAL,
  status TEXT NOT NULL, pid INTEGER, host TEXT, config_json TEXT NOT NULL, result_json TEXT);
CREATE TABLE IF NOT EXISTS rounds (
  run_id TEXT NOT NULL, round INTEGER NOT NULL, nodes INTEGER, failed INTEGER,
  train_loss REAL, test_loss REAL, test_accuracy REAL, wall_s REAL, bytes_down INTEGER,
  bytes_up INTEGER, energy_j REAL, co2_g REAL, PRIMARY KEY (run_id, round));
CREATE TABLE IF NOT EXISTS node_metrics (
  run_id TEXT NOT NULL, round INTEGER NOT NULL, node_id TEXT NOT NULL, phase TEXT NOT NULL,
  examples INTEGER, steps INTEGER, train_loss REAL, wall_s REAL, cpu_s REAL,
  bytes_down INTEGER, bytes_up INTEGER, energy_j REAL, co2_g REAL, energy_method TEXT);
CREATE INDEX IF NOT EXISTS node_metrics_run ON node_metrics (run_id, round);
CREATE TABLE IF NOT EXISTS node_evals (
  run_id TEXT NOT NULL, node_id TEXT NOT NULL, num_examples INTEGER, accuracy_global REAL,
  loss_global REAL, accuracy_personalized REAL, loss_personalized REAL,
  PRIMARY KEY (run_id, node_id));
CREATE TABLE IF NOT EXISTS states (
  run_id TEXT NOT NULL, round INTEGER NOT NULL, path TEXT NOT NULL, PRIMARY KEY (run_id, round));
CREATE TABLE IF NOT EXISTS checkpoints (
  run_id TEXT NOT NULL, round INTEGER NOT NULL, path TEXT NOT NULL, bytes INTEGER,
  PRIMARY KEY (run_id, round));
"""

RESUMABLE = ("incomplete", "crashed", "interrupted")
# (table, column, type) added to stores written by older versions
MIGRATIONS = [("states", "sha256", "TEXT"), ("checkpoints", "sha256", "TEXT"),
              ("rounds", "epsilon", "REAL"), ("node_metrics", "epsilon", "REAL"),
              ("rounds", "coordinator_energy_j", "REAL"), ("node_metrics", "attack", "TEXT")]
log = logging.getLogger("fedtune.store")


ROUND_COLUMNS = ["round", "nodes", "failed", "train_loss", "test_loss", "test_accuracy", "wall_s",
                 "bytes_down", "bytes_up", "energy_j", "co2_g", "epsilon", "coordinator_energy_j"]
NODE_COLUMNS = ["round", "node_id", "phase", "examples", "steps", "train_loss", "wall_s", "cpu_s",
                "bytes_down", "bytes_up", "energy_j", "co2_g", "energy_method", "epsilon", "attack"]


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """Read and write runs in ``<workspace>/runs.sqlite``."""

    def __init__(self, workspace: str | Path) -> None:
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.path = self.workspace / "runs.sqlite"
        try:
            # one thread at a time: the round loop, or the coordinator's RoundWriter
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            for table, column, kind in MIGRATIONS:
                have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    with self.db:
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a fedtune run store ({exc}); point "
                             "run.workspace at another folder") from None
        self.db.row_factory = sqlite3.Row
        self.digests: dict[Path, str] = {}  # state files written, not yet recorded

    def close(self) -> None:
        self.db.close()

    # -- writing -------------------------------------------------------------------------
    @database_errors
    def start_run(self, name: str, config: dict[str, Any]) -> str:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        with self.db:
            self.db.execute(
                "INSERT INTO runs (run_id, name, created, status, pid, host, config_json) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (run_id, name, time.time(), os.getpid(), socket.gethostname(),
                 json.dumps(config)))
        return run_id

    @database_errors
    def record_round(self, run_id: str, record: RoundRecord, nodes: list[NodeRoundRecord],
                     state_path: Path | None = None, *, keep_states: int = 2) -> None:
        """Commit one round's record, its ledger and (for resume) its coordinator state file
        in one transaction: a round is either wholly stored or not at all. The run's state
        files beyond the newest ``keep_states`` are forgotten in the same transaction and
        deleted after it."""
        stale: list[str] = []
        with self.db:
            if state_path is not None:
                self.db.execute("INSERT OR REPLACE INTO states (run_id, round, path, sha256) "
                                "VALUES (?, ?, ?, ?)", (run_id, record.round, str(state_path),
                                                        self.digests.pop(state_path, None)))
                stale = [r["path"] for r in self.db.execute(
                    "SELECT path FROM states WHERE run_id=? ORDER BY round DESC LIMIT -1 "
                    "OFFSET ?", (run_id, keep_states))]
                if stale:
                    self.db.execute("DELETE FROM states WHERE run_id=? AND round NOT IN (SELECT "
                                    "round FROM states WHERE run_id=? ORDER BY round DESC "
                                    "LIMIT ?)", (run_id, run_id, keep_states))
            self.db.execute(
                f"INSERT OR REPLACE INTO rounds (run_id, {', '.join(ROUND_COLUMNS)}) "
                f"VALUES ({', '.join('?' * (len(ROUND_COLUMNS) + 1))})",
                (run_id, record.round, len(record.nodes), len(record.failed), record.train_loss,
                 record.test_loss, record.test_accuracy, record.wall_s, record.bytes_down,
                 record.bytes_up, record.energy_j, record.co2_g, record.epsilon,
                 record.coordinator_energy_j))
            self._insert_ledger(run_id, nodes)
        for path in stale:
            Path(path).unlink(missing_ok=True)

    @database_errors
    def record_ledger(self, run_id: str, nodes: list[NodeRoundRecord]) -> None:
        """Add node rows outside a round (e.g. the final evaluation)."""
        with self.db:
            self._insert_ledger(run_id, nodes)

    def _insert_ledger(self, run_id: str, nodes: list[NodeRoundRecord]) -> None:
        self.db.executemany(
            f"INSERT INTO node_metrics (run_id, {', '.join(NODE_COLUMNS)}) "
            f"VALUES ({', '.join('?' * (len(NODE_COLUMNS) + 1))})",
            [(run_id, *(getattr(n, c) for c in NODE_COLUMNS)) for n in nodes])

    @database_errors
    def record_node_evals(self, run_id: str, rows: list[tuple[str, int, float, float,
                                                              float | None, float | None]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO node_evals VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, *r) for r in rows])

    def save_checkpoint(self, run_id: str, round_: int, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str]) -> Path:
        path = self.workspace / "checkpoints" / run_id / f"round-{round_:05d}.safetensors"
        digest = write_safetensors(path, tensors, {**metadata, "run_id": run_id,
                                                         "round": str(round_)}, "checkpoint")
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO checkpoints (run_id, round, path, bytes, "
                            "sha256) VALUES (?, ?, ?, ?, ?)",
                            (run_id, round_, str(path), path.stat().st_size, digest))
        return path

    def write_state(self, run_id: str, round_: int, tensors: dict[str, torch.Tensor],
                    metadata: dict[str, str]) -> Path:
        """Write the coordinator's state after ``round_`` (atomic rename); the round's
        :meth:`record_round` then makes it the state to resume from, with its checksum."""
        path = self.workspace / "checkpoints" / run_id / f"state-{round_:05d}.safetensors"
        self.digests[path] = write_safetensors(
            path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            {**metadata, "run_id": run_id, "round": str(round_)}, "resume state file")
        return path

    @database_errors
    def load_checkpoint(self, run: str, round_: int | None = None) -> dict[str, torch.Tensor]:
        """A run's checkpoint (the newest, or of ``round_``), verified against its SHA-256."""
        run_id = self.resolve(run)
        rows = self.db.execute("SELECT round, path, sha256 FROM checkpoints WHERE run_id=? "
                               "ORDER BY round DESC", (run_id,)).fetchall()
        row = next((r for r in rows if round_ is None or r["round"] == round_), None)
        if row is None:
            raise StoreError(f"run {run_id} has no checkpoint"
                             + (f" of round {round_}" if round_ is not None else ""))
        return read_verified(Path(row["path"]), row["sha256"])[0]

    @database_errors
    def latest_state(self, run_id: str) -> tuple[int, dict[str, torch.Tensor], dict[str, str]]:
        """The newest committed coordinator state of a run that is intact: (round, tensors,
        metadata). A damaged newest state is reported and the one before it is used."""
        rows = self.db.execute("SELECT round, path, sha256 FROM states WHERE run_id=? "
                               "ORDER BY round DESC", (run_id,)).fetchall()
        if not rows:
            raise StoreError(f"run {run_id} has no completed round to resume from; start it "
                             "again without --resume")
        problems = []
        for row in rows:
            try:
                tensors, meta = read_verified(Path(row["path"]), row["sha256"])
            except StoreError as exc:
                problems.append(str(exc))
                log.warning("cannot resume from round %d: %s", row["round"], exc)
                continue
            return int(row["round"]), tensors, meta
        raise StoreError(f"no intact state to resume run {run_id} from: {'; '.join(problems)}; "
                         "start the run again without --resume")

    @database_errors
    def round_records(self, run_id: str) -> list[RoundRecord]:
        """The stored rounds of a run as records; node names come from the round's ledger
        (selection order, which is the sorted order of node ids)."""
        rows = self.db.execute(f"SELECT {', '.join(ROUND_COLUMNS)} FROM rounds WHERE run_id=? "
                               "AND round > 0 ORDER BY round", (run_id,)).fetchall()
        names: dict[tuple[int, str], list[str]] = {}
        for row in self.db.execute("SELECT round, node_id, phase FROM node_metrics WHERE "
                                   "run_id=? AND phase IN ('fit', 'failed') ORDER BY rowid",
                                   (run_id,)):
            names.setdefault((row["round"], row["phase"]), []).append(row["node_id"])
        return [RoundRecord(round=r["round"], nodes=sorted(names.get((r["round"], "fit"), [])),
                            failed=names.get((r["round"], "failed"), []),
                            train_loss=r["train_loss"], test_loss=r["test_loss"],
                            test_accuracy=r["test_accuracy"], wall_s=r["wall_s"],
                            bytes_down=r["bytes_down"], bytes_up=r["bytes_up"],
                            energy_j=r["energy_j"], co2_g=r["co2_g"], epsilon=r["epsilon"],
                            coordinator_energy_j=r["coordinator_energy_j"] or 0.0)
                for r in rows]

    @database_errors
    def resumable_run(self, run: str | None) -> str:
        """The run to resume: the given one, or the newest run that did not complete
        (killed, or crashed on an error)."""
        if run:
            run_id = self.resolve(run)
            row = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if self._status(row) not in RESUMABLE:
                raise StoreError(f"run {run_id} is {self._status(row)}; only an incomplete, "
                                 "crashed or interrupted run can be resumed")
            return run_id
        rows = self.db.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
        for row in rows:
            if self._status(row) in RESUMABLE:
                return str(row["run_id"])
        raise StoreError(f"no incomplete, crashed or interrupted run in {self.path} to "
                         "resume")

    @database_errors
    def mark_resumed(self, run_id: str, round_: int) -> None:
        """Reopen a run at its state after ``round_``: later partial records are dropped, so
        nothing is counted twice when those rounds run again."""
        with self.db:
            for table in ("rounds", "node_metrics", "checkpoints", "states"):
                self.db.execute(f"DELETE FROM {table} WHERE run_id=? AND round>?",
                                (run_id, round_))
            self.db.execute("UPDATE runs SET status='running', pid=?, host=? WHERE run_id=?",
                            (os.getpid(), socket.gethostname(), run_id))

    @database_errors
    def finish_run(self, run_id: str, result: RunResult, status: str = "complete") -> None:
        with self.db:
            self.db.execute("UPDATE runs SET status=?, finished=?, result_json=? WHERE run_id=?",
                            (status, time.time(), json.dumps(asdict(result)), run_id))

    def crash_run(self, run_id: str, reason: str, status: str = "crashed") -> None:
        """The coordinator stopped mid-run on an error (``crashed``) or on Ctrl-C
        (``interrupted``): neither is final, ``--resume`` continues such a run from its last
        completed round. Never raises: the store may be what failed (disk full), and the
        first error is the one to report."""
        try:
            with self.db:
                self.db.execute("UPDATE runs SET status=?, finished=?, result_json=? "
                                "WHERE run_id=?",
                                (status, time.time(), json.dumps({"error": reason}), run_id))
        except sqlite3.Error:
            pass

    # -- reading -------------------------------------------------------------------------
    def _status(self, row: sqlite3.Row) -> str:
        if row["status"] != "running":
            return str(row["status"])
        same_host = row["host"] == socket.gethostname()
        return "running" if same_host and _pid_alive(row["pid"]) else "incomplete"

    @database_errors
    def list_runs(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM rounds WHERE run_id=r.run_id AND round >= 1) "
            "AS rounds_done, "
            "(SELECT test_accuracy FROM rounds WHERE run_id=r.run_id AND test_accuracy IS NOT "
            "NULL ORDER BY round DESC LIMIT 1) AS last_accuracy FROM runs r ORDER BY created"
        ).fetchall()
        return [{"run_id": r["run_id"], "name": r["name"], "created": r["created"],
                 "status": self._status(r), "rounds_done": r["rounds_done"],
                 "rounds_planned": json.loads(r["config_json"]).get("run", {}).get("rounds"),
                 "last_accuracy": r["last_accuracy"]} for r in rows]

    @database_errors
    def resolve(self, run: str) -> str:
        """A full run id from an id, a unique prefix, or 'last'."""
        if run == "last":
            row = self.db.execute("SELECT run_id FROM runs ORDER BY created DESC LIMIT 1").fetchone()
            if row is None:
                raise StoreError(f"no runs in {self.path}; start one with 'fedtune run'")
            return str(row["run_id"])
        rows = self.db.execute("SELECT run_id FROM runs WHERE run_id LIKE ?",
                               (f"{run}%",)).fetchall()
        if len(rows) != 1:
            what = "no run" if not rows else f"{len(rows)} runs"
            raise StoreError(f"{what} in {self.path} match {run!r}; 'fedtune runs' lists them")
        return str(rows[0]["run_id"])

    @database_errors
    def load_run(self, run: str) -> dict[str, Any]:
        run_id = self.resolve(run)
        row = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        rounds = [dict(r) for r in self.db.execute(
            f"SELECT {', '.join(ROUND_COLUMNS)} FROM rounds WHERE run_id=? ORDER BY round",
            (run_id,))]
        nodes = [dict(r) for r in self.db.execute(
            f"SELECT {', '.join(NODE_COLUMNS)} FROM node_metrics WHERE run_id=? "
            "ORDER BY round, node_id, phase", (run_id,))]
        evals = [dict(r) for r in self.db.execute(
            "SELECT node_id, num_examples, accuracy_global, loss_global, accuracy_personalized, "
            "loss_personalized FROM node_evals WHERE run_id=? ORDER BY node_id", (run_id,))]
        ckpts = [dict(r) for r in self.db.execute(
            "SELECT round, path, bytes FROM checkpoints WHERE run_id=? ORDER BY round",
            (run_id,))]
        return {"run_id": run_id, "name": row["name"], "created": row["created"],
                "finished": row["finished"], "status": self._status(row), "host": row["host"],
                "config": json.loads(row["config_json"]),
                "result": json.loads(row["result_json"]) if row["result_json"] else None,
                "rounds": rounds, "node_metrics": nodes, "node_evals": evals,
                "checkpoints": ckpts}

    def export(self, run: str, fmt: str, out: Path | str) -> list[Path]:
        """Write a run as one JSON file (``out`` a file or a folder) or as CSV files in the
        folder ``out`` (rounds, node metrics, node evals)."""
        if fmt not in ("json", "csv"):
            raise StoreError(f"export format {fmt!r} is unknown; use json or csv")
        data = self.load_run(run)
        out = Path(out)
        try:
            if fmt == "json":
                if out.is_dir() or str(out).endswith(("/", os.sep)):
                    out = out / f"{data['run_id']}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(data, indent=2))
                return [out]
            return self._export_csv(data, out)
        except OSError as exc:
            raise StoreError(f"cannot write the export to {out} ({exc.strerror or exc}); "
                             "choose another --out") from None

    def _export_csv(self, data: dict[str, Any], out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for table in ("rounds", "node_metrics", "node_evals"):
            path = out / f"{data['run_id']}-{table}.csv"
            rows = data[table]
            with path.open("w", newline="") as fh:
                if rows:
                    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
            written.append(path)
        return written


def existing_store(workspace: str | Path) -> RunStore:
    """The run store already in ``workspace``, or a StoreError (no new, empty one is made
    where a user mistyped a folder)."""
    if not (Path(workspace) / "runs.sqlite").is_file():
        raise StoreError(f"no run store in {str(workspace)!r}; run 'fedtune run' first or pass "
                         "--workspace")
    return RunStore(workspace)
