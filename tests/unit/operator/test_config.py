"""Every setting comes from ACCORDION_* and is documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from accordion_operator.__main__ import main
from accordion_operator.config import EVERY_ADDRESS, Config, describe, http_host


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


def test_listen_address_is_an_ip_or_the_pods() -> None:
    """`pod-ip` reads $POD_IP (the chart's downward API variable); outside a pod it means every
    address; anything but an IP is refused with the setting's name."""
    pod_ip = Config(bind_address="pod-ip")
    assert pod_ip.listen_address({"POD_IP": "10.1.2.3"}) == "10.1.2.3"
    assert pod_ip.listen_address({}) == EVERY_ADDRESS
    assert Config().listen_address({"POD_IP": "10.1.2.3"}) == EVERY_ADDRESS
    assert Config(bind_address="fd00::1").listen_address({}) == "fd00::1"
    with pytest.raises(ValueError, match="ACCORDION_BIND_ADDRESS='eth0'"):
        Config(bind_address="eth0").listen_address({})
    assert http_host("fd00::1") == "[fd00::1]"
    assert http_host("10.1.2.3") == "10.1.2.3"


@pytest.mark.parametrize(
    ("name", "raw", "said"),
    [
        ("ACCORDION_LAUNCHER_IDENTITY_IDLE_SECONDS", "ten minutes", "not a number"),
        ("ACCORDION_BATCH_RUNS", "2.5", "not a whole number"),
    ],
)
def test_a_setting_that_is_no_number_stops_the_operator_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    raw: str,
    said: str,
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2
    assert f"{name}={raw!r}: {said}" in capsys.readouterr().err


def test_a_bad_bind_address_stops_the_operator_with_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ACCORDION_BIND_ADDRESS", "localhost:80")
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2
    assert "ACCORDION_BIND_ADDRESS='localhost:80'" in capsys.readouterr().err
