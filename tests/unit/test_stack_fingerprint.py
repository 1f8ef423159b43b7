"""`stack up` restarts a service only when its configuration changed: the same settings
give the same fingerprint in every process, whatever Python's hash seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from devstack.apps import app_services, settings_environment
from shared.settings import Settings

FINGERPRINTS = (
    "from devstack.apps import app_services; from shared.settings import Settings; "
    "print(' '.join(p.fingerprint for p in app_services(Settings())))"
)


def test_the_fingerprints_do_not_depend_on_the_hash_seed() -> None:
    # Profiles hold frozensets, whose iteration order follows the seed.
    seen = set()
    for seed in ("1", "2", "3"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARANCE_")}
        env["PYTHONHASHSEED"] = seed
        done = subprocess.run(
            [sys.executable, "-c", FINGERPRINTS],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        seen.add(done.stdout.strip())
    assert len(seen) == 1, seen


def test_sets_are_written_sorted_and_read_back_the_same() -> None:
    settings = Settings()
    env = settings_environment(settings)
    types = json.loads(env["CLEARANCE_PROFILES"])["image"]["content_types"]
    assert len(types) > 1
    assert types == sorted(types)
    assert Settings(profiles=json.loads(env["CLEARANCE_PROFILES"])).profiles == settings.profiles


def test_a_changed_setting_changes_the_fingerprint() -> None:
    before = {p.name: p.fingerprint for p in app_services(Settings())}
    after = {p.name: p.fingerprint for p in app_services(Settings(clamd_port=13999))}
    assert all(before[name] != after[name] for name in before)
