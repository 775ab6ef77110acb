"""Test helpers: streams of real photos (site-mix samples, darkened copies, uploads) and
checkpoints that record a data module."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from tests.fixtures_serving import MODEL_SIZE


def site_mix_sample(frame: pd.DataFrame, counts: dict[str, int], n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of ``frame`` whose body sites follow ``counts`` (largest remainder)."""
    total = sum(counts.values())
    exact = {s: n * c / total for s, c in counts.items()}
    take = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: exact[s] - take[s], reverse=True)[
        : n - sum(take.values())
    ]:
        take[s] += 1
    parts = [
        frame[frame["site"] == s].sample(
            k, random_state=seed, replace=k > (frame["site"] == s).sum()
        )
        for s, k in take.items()
        if k
    ]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def darker(path: str, factor: float) -> bytes:
    """The photo with every pixel value scaled by ``factor``, as a JPEG (quality 95)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) * factor
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=95)
    return out.getvalue()


def post(client: Any, url: str, **kwargs: Any) -> Any:
    """POST as a well-behaved client: a 429 from the gateway's per-key rate limit is waited
    out (Retry-After) and retried; a stream of hundreds of uploads outruns any burst."""
    for _ in range(60):
        r = client.post(url, **kwargs)
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers.get("Retry-After", "1")))
    raise AssertionError(f"still rate-limited after 60 tries: {r.text}")


def upload_stream(
    gateway: Any,
    rows: pd.DataFrame,
    photo: Callable[[str], bytes] = lambda p: Path(p).read_bytes(),
    feedback: bool = False,
    consent: bool = False,
) -> list[dict]:
    """Upload each row's photo with its site, age and sex; send its dx as feedback if asked.
    Returns the answers."""
    answers = []
    with gateway.client() as client:
        for row in rows.itertuples():
            fields = {"body_location": row.site, "sex": row.sex, "consent_to_store_image": consent}
            if not pd.isna(row.age):
                fields["age"] = int(row.age)
            r = post(
                client,
                "/v1/predictions",
                data={
                    k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()
                },
                files={"image": (f"{row.image_id}.jpg", photo(row.path), "image/jpeg")},
            )
            assert r.status_code == 201, r.text
            answers.append(r.json())
            if feedback:
                f = post(
                    client,
                    f"/v1/predictions/{answers[-1]['id']}/feedback",
                    json={"diagnosis": row.label, "confirmation": row.dx_type},
                )
                assert f.status_code == 201, f.text
    return answers


def with_datamodule(ckpt: Path, out: Path, **hparams: Any) -> Path:
    """A copy of ``ckpt`` that records the data module's hyperparameters, as Lightning writes
    them for ``python -m training fit`` (``datamodule_hyper_parameters``)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["datamodule_hyper_parameters"] = {"image_size": list(MODEL_SIZE), **hparams}
    torch.save(state, out)
    return out
