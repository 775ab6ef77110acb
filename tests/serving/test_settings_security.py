"""Settings from the environment, hashed API keys, and `python -m serving` starting for real."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from contracts.metadata import VersionMetadata
from contracts.quality import COLOURLESS, ImageFeatures, check_content
from serving.gate import GatePolicy, gate_for, screen_pixels
from serving.model_info import referral_setup
from serving.referral import decide, no_advice
from serving.security import client_id, ensure_dev_key, hash_key, main, match_key, new_key
from serving.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    digests = [hash_key("a"), hash_key("b")]
    monkeypatch.setenv("SKIN_API_KEY_HASHES", f" {digests[0].upper()} , {digests[1]}")
    monkeypatch.setenv("SKIN_TRITON_URL", "triton:9001")
    monkeypatch.setenv("SKIN_MAX_PIXELS", "1234")
    s = Settings()
    assert s.api_key_hashes == digests
    assert (s.triton_url, s.max_pixels) == ("triton:9001", 1234)
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()  # read once
    finally:
        get_settings.cache_clear()


def test_colourfulness_override_comes_from_its_own_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SKIN_QUALITY_MIN_COLOURFULNESS overrides the version's threshold like the others; for a
    version without gate.quality it is the only one checked (the rest unbounded: null in the
    /v1/models description)."""
    monkeypatch.setenv("SKIN_QUALITY_MIN_COLOURFULNESS", "10.5")
    s = Settings(allow_no_auth=True)
    assert s.quality_overrides == {"min_colourfulness": 10.5}
    gate = gate_for(None, "1", GatePolicy.from_settings(s))
    assert gate.quality is not None and gate.quality_source == (
        "settings (SKIN_QUALITY_MIN_COLOURFULNESS)"
    )
    described = gate.describe()["quality"]
    assert described["min_colourfulness"] == 10.5
    unbounded = {k for k, v in described.items() if v is None}
    assert unbounded == set(described) - {"min_colourfulness", "min_short_side"}
    grey = np.full((450, 600, 3), 120, np.uint8)
    grey[::2] = 60  # contrast and sharpness, no colour
    model_input, refusal = screen_pixels(grey, (112, 150), gate.quality)
    assert model_input is not None and refusal is not None and refusal.code == COLOURLESS
    fine = ImageFeatures(450, 1.33, 150.0, 30.0, 50.0, colourfulness=11.0)
    assert check_content(fine, gate.quality) is None
    with pytest.raises(ValidationError):
        Settings(allow_no_auth=True, quality_min_colourfulness=-1)


def test_settings_refuse_to_run_without_keys_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKIN_API_KEY_HASHES", raising=False)
    monkeypatch.chdir(ROOT.parent)  # no .env here
    with pytest.raises(ValidationError, match="no API keys configured"):
        Settings()
    assert Settings(allow_no_auth=True).api_key_hashes == []


def test_keys_in_clear_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValidationError) as e:
        Settings(api_key_hashes="my-secret-key-123")
    assert "entries [1] are not sha256" in str(e.value)
    assert "my-secret" not in str(e.value).split("input_value")[0]


def test_keys_match_by_digest() -> None:
    key = new_key()
    assert len(key) >= 40 and key != new_key()
    digests = [hash_key("other"), hash_key(key)]
    assert match_key(key, digests) == digests[1]
    assert match_key(key + "x", digests) is None and match_key("", digests) is None
    assert client_id(digests[1]) == digests[1][:12]


def test_hash_key_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    assert main(["hash-key"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("s3cret")
    assert main(["new-key"]) == 0
    out = capsys.readouterr().out
    key = out.split("key:")[1].split()[0]
    assert f"digest: {hash_key(key)}" in out
    assert main(["bogus"]) == 2


def test_dev_key_is_made_once_and_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, key_file = tmp_path / ".env", tmp_path / "cache" / "dev-api-key"
    env.write_text("SKIN_PORT=8123\n")
    assert ensure_dev_key(env, key_file) is True
    assert ensure_dev_key(env, key_file) is False  # idempotent
    key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKIN_API_KEY_HASHES", raising=False)
    settings = Settings()  # reads .env from the working directory
    assert settings.port == 8123 and match_key(key, settings.api_key_hashes)


def test_referral_thresholds_are_inclusive_and_use_the_larger_score() -> None:
    thresholds = {"malignant": 0.5, "mel": 0.3}
    raw = [0.1, 0.1, 0.1, 0.1, 0.3, 0.2, 0.1]  # P(mel) = 0.3 exactly
    r = decide(raw, {"mel": 0.3}, thresholds)
    assert r.refer and "P(melanoma) = 0.300 >= threshold 0.300" in r.reason
    low = decide([0.0, 0.1, 0.2, 0.1, 0.1, 0.4, 0.1], {"bcc": 0.1, "mel": 0.1}, thresholds)
    assert not low.refer and low.scores == {"malignant": 0.2, "mel": 0.1}
    # The rules moved mass onto malignant classes: the larger score decides.
    after = {"akiec": 0.2, "bcc": 0.2, "mel": 0.2, "nv": 0.4}
    assert decide([0.1, 0.1, 0.1, 0.3, 0.1, 0.2, 0.1], after, thresholds).refer


def test_referral_needs_a_validated_threshold_for_every_target() -> None:
    """Only metadata.json's thresholds count; a missing one means no advice, never a default."""
    meta = VersionMetadata(name="skin_lesion", input_size=(112, 150))
    meta.thresholds = {"mel": {"threshold": 0.2}, "malignant": {"threshold": 0.45}}
    full = referral_setup(meta, "3")
    assert (full.thresholds, full.source, full.no_advice) == (
        {"malignant": 0.45, "mel": 0.2},
        "metadata.json",
        None,
    )
    gaps = [
        ({}, "malignant, mel"),
        ({"mel": {"threshold": 0.2}}, "malignant"),
        ({"mel": {"threshold": 0.2}, "malignant": {"threshold": 1.5}}, "malignant"),
    ]
    for thresholds, missing in gaps:
        meta.thresholds = thresholds
        setup = referral_setup(meta, "3")
        assert (setup.thresholds, setup.source) == ({}, "none")
        assert setup.status == f"no validated thresholds in version 3 (none for {missing})"
        assert setup.no_advice is not None
        assert setup.no_advice.startswith("no referral advice: model version 3 has no validated")
    unreadable = referral_setup(None, "3")
    assert unreadable.thresholds == {} and "cannot be read" in str(unreadable.no_advice)
    r = no_advice([0.1, 0.1, 0.1, 0.1, 0.3, 0.2, 0.1], {"mel": 0.35}, "why")
    assert (r.refer, r.thresholds, r.reason) == (None, {}, "why")
    assert r.scores == {"malignant": 0.5, "mel": 0.35}  # the larger of before and after


@pytest.mark.slow
def test_python_m_serving_starts_and_refuses_without_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIN_")}
    cmd = [sys.executable, "-m", "serving"]
    refused = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no API keys configured" in refused.stderr
    assert "Traceback" not in refused.stderr
    clear = {**env, "SKIN_API_KEY_HASHES": "my-secret-key-123"}  # a key pasted in by mistake
    refused = subprocess.run(
        cmd, cwd=tmp_path, env=clear, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "not sha256 hex digests" in refused.stderr
    assert "my-secret" not in refused.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(
        SKIN_API_KEY_HASHES=hash_key("k"),
        SKIN_PORT=str(port),
        SKIN_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
        SKIN_RULES_PATH=str(ROOT / "configs" / "body_location_rules.yaml"),
        SKIN_TRITON_URL="127.0.0.1:1",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert r.json() == {"status": "alive"}
        assert (
            httpx.get(f"http://127.0.0.1:{port}/readyz?strict=true").status_code == 503
        )  # no Triton
        assert (tmp_path / "db.sqlite").exists()  # migrated at startup
    finally:
        proc.terminate()
        proc.wait(timeout=30)
