"""Serve a study with optuna-dashboard (127.0.0.1 unless told otherwise)."""

from __future__ import annotations

from optuna_dashboard import run_server

from kdnas.search.study import open_storage


def serve_dashboard(storage_url: str, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run optuna-dashboard on ``storage_url`` until interrupted."""
    run_server(open_storage(storage_url), host=host, port=port)
