"""Tracking store checks and helpers: fail fast on unusable stores, URIs, registry round trip, compare table, UI
command."""

from __future__ import annotations

import socket

import pytest

from flows.cli import build_parser, main, parse_slices
from flows.models import file_digest, resolve_model
from flows.tracking.compare import compare_rows
from flows.tracking.registry import ModelReferenceError, fetch_registered_checkpoint, register_checkpoint
from flows.tracking.store import Tracker, TrackingUnavailable, check_tracking_uri, open_tracker, tracking_uri
from flows.tracking.ui import require_free_port, ui_command
from storage.ledger import slice_ranges


@pytest.fixture(scope="module")
def store_uri(tracking_store):
    """The module's tracking store URI."""
    return tracking_store


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_default_store_is_sqlite_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri() == "http://127.0.0.1:1"


def test_unusable_stores_fail_fast_with_a_clear_message(tmp_path):
    with pytest.raises(TrackingUnavailable, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    with pytest.raises(TrackingUnavailable, match="unreachable.*--no-tracking"):
        check_tracking_uri(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    with pytest.raises(TrackingUnavailable, match="unsupported scheme"):
        check_tracking_uri("ftp://example.org/store")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TrackingUnavailable, match="cannot be used"):
        check_tracking_uri(f"sqlite:///{corrupt}")


def test_disabled_tracking_touches_no_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    assert open_tracker(False, "anything") is None
    with pytest.raises(TrackingUnavailable):
        open_tracker(True, "anything")


def test_slice_ranges_and_cli_slices_round_trip():
    assert slice_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert slice_ranges([]) == ""
    assert parse_slices("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]


def test_registered_checkpoint_resolves_by_version_and_alias_and_is_pinned(store_uri, tmp_path):
    tracker = Tracker(store_uri, "registry-test")
    run = tracker.start_run("train", "train-spdiff")
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"stands in for a checkpoint in this registry round trip")
    version = register_checkpoint(tracker, run, fake, "spdiff", file_digest(fake))
    tracker.client.set_registered_model_alias("need-spdiff", "champion", version)

    by_version, label = fetch_registered_checkpoint(f"models:/need-spdiff/{version}", file_digest)
    by_alias, _ = fetch_registered_checkpoint("models:/need-spdiff@champion", file_digest)
    assert by_version == by_alias and label == f"need-spdiff/{version}"
    assert by_version.read_bytes() == fake.read_bytes()

    by_version.write_bytes(b"damaged cache")  # a damaged cache is fetched again, never used
    again, _ = fetch_registered_checkpoint(f"models:/need-spdiff/{version}", file_digest)
    assert again.read_bytes() == fake.read_bytes()

    with pytest.raises(ModelReferenceError, match="no registered model version"):
        fetch_registered_checkpoint("models:/need-spdiff/999", file_digest)
    with pytest.raises(ModelReferenceError, match="not models:/NAME/VERSION"):
        fetch_registered_checkpoint("models:/need-spdiff", file_digest)
    with pytest.raises(Exception, match="not a torch file|corrupt"):  # a real load refuses a non-checkpoint
        resolve_model(f"models:/need-spdiff/{version}", "spdiff")


def test_compare_of_an_unknown_experiment_lists_the_known_ones(store_uri):
    Tracker(store_uri, "known-experiment")
    with pytest.raises(ValueError, match="known-experiment"):
        compare_rows("no-such-experiment")


def test_ui_command_serves_the_same_store_on_localhost(store_uri):
    command = ui_command(store_uri, port=5123)
    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == store_uri
    assert command[command.index("--host") + 1] == "127.0.0.1" and "5123" in command
    with pytest.raises(ValueError, match="already a server"):
        ui_command("http://127.0.0.1:5000")
    args = build_parser().parse_args(["ui", "--port", "5999"])
    assert args.command == "ui" and args.port == 5999


def test_need_ui_refuses_a_port_in_use_before_starting_anything(store_uri, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 1
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


@pytest.mark.slow
def test_need_ui_prints_the_runs_table_once_it_answers_and_stops_on_ctrl_c(store_uri):
    import signal
    import subprocess
    import sys
    import urllib.request

    tracker = Tracker(store_uri, "ui-experiment")
    tracker.client.set_terminated(tracker.start_run("a run", "reconstruct"))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()  # printed only once the UI answers
        assert line.startswith("MLflow runs: ")
        url = line.split()[2]
        assert url == f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs"
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        process.kill()
    with pytest.raises(ConnectionRefusedError):  # the UI is gone with the command
        socket.create_connection(("127.0.0.1", port), timeout=5)
    require_free_port(port)  # and `need ui` may start again on the same port at once
