"""Every setting comes from ACCORDION_* and is documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from accordion_operator.__main__ import main
from accordion_operator.config import Config, describe


def test_from_env_parses_types() -> None:
    cfg = Config.from_env(
        {
            "ACCORDION_NAMESPACES": "a, b,,",
            "ACCORDION_SCALE_COOLDOWN_SECONDS": "2.5",
            "ACCORDION_MAX_CONCURRENT_REQUESTS": "8",
            "ACCORDION_TRAINER_IMAGE": "reg/t:1",
            "ACCORDION_EXTRA_POD_LABELS": "team=ml,cost=42",
            "UNRELATED": "x",
        }
    )
    assert cfg.namespaces == ("a", "b")
    assert cfg.scale_cooldown_seconds == 2.5
    assert cfg.max_concurrent_requests == 8
    assert cfg.trainer_image == "reg/t:1"
    assert cfg.pod_labels() == {"team": "ml", "cost": "42"}
    assert Config.from_env({}) == Config()


def test_every_setting_is_documented(capsys: object) -> None:
    rows = describe()
    assert len(rows) == len(fields(Config))
    for name, _default, doc in rows:
        assert name.startswith("ACCORDION_")
        assert len(doc) > 10, name
    main(["--help-config"])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "| `ACCORDION_SCALE_COOLDOWN_SECONDS` | `30.0` |" in out
    # docs/trainingrun.md carries the same table
    docs = (Path(__file__).resolve().parents[3] / "docs" / "trainingrun.md").read_text()
    assert [row for row in out.splitlines() if row.startswith("| `")] == [
        row for row in docs.splitlines() if row.startswith("| `ACCORDION_")
    ]


def test_builtin_models_are_the_ones_the_trainer_ships() -> None:
    """A name the trainer lacks would be admitted and then fail in the launcher (ModelInvalid);
    one it ships would be refused (UnknownBuiltinModel). The chart's default is the same list
    (tests/chart: the chart's settings parse to these defaults)."""
    from accordion_trainer.models import BUILTIN_MODELS

    assert sorted(Config().builtin_models) == sorted(BUILTIN_MODELS)
