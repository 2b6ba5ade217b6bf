"""Tests that need Airflow 3 itself: run by ``make test-airflow`` in its cached venv, skipped elsewhere."""

from __future__ import annotations

import pytest

pytest.importorskip("airflow", reason="Airflow is not installed here; run `make test-airflow`")
