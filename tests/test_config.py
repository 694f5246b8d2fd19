import pytest
import yaml

from zxl.config import ConfigError, config_hash, dump_yaml, load_config, valid_keys
from zxl.pipeline.config import CurateConfig


def test_defaults_and_override_types():
    cfg = load_config(CurateConfig, overrides=["fetch.timeout=5", "run.workers=3", "source.keep_columns=[a, b]"])
    assert cfg.fetch.timeout == 5.0 and isinstance(cfg.fetch.timeout, float)
    assert cfg.run.workers == 3
    assert cfg.source.keep_columns == ["a", "b"]
    assert cfg.fetch.image_size == 1024


@pytest.mark.parametrize(
    ("override", "named", "suggested"),
    [
        ("fetch.timout=3", "fetch.timout", "fetch.timeout"),
        ("run.shardsize=10", "run.shardsize", "run.shard_size"),
        ("fetsh.timeout=3", "fetsh.timeout", "fetch.timeout"),
        ("run.sheduler=sync", "run.sheduler", "run.scheduler"),
    ],
)
def test_unknown_key_names_it_and_the_closest(override, named, suggested):
    with pytest.raises(ConfigError) as e:
        load_config(CurateConfig, overrides=[override])
    assert f"'{named}'" in str(e.value)
    assert f"'{suggested}'" in str(e.value)


def test_unknown_key_in_a_preset(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("fetch:\n  thread_cout: 8\n")
    with pytest.raises(ConfigError, match=r"'fetch.thread_cout'.*'fetch.thread_count'"):
        load_config(CurateConfig, [p])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.workers=many", "run.workers' wants an integer"),
        ("run.progress=maybe", "run.progress' wants true or false"),
        ("fetch.timeout=[1]", "fetch.timeout' wants a number"),
        ("source.keep_columns=abc", "source.keep_columns' wants a list"),
        ("fetch=3", "section 'fetch' must be a mapping"),
    ],
)
def test_wrong_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CurateConfig, overrides=[override])


def test_presets_merge_in_order_and_set_wins(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("run: {name: a, workers: 2}\nfetch: {timeout: 4}\n")
    b.write_text("run: {name: b}\n")
    cfg = load_config(CurateConfig, [a, b], ["fetch.timeout=9"])
    assert (cfg.run.name, cfg.run.workers, cfg.fetch.timeout) == ("b", 2, 9.0)


def test_missing_and_malformed_presets(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(CurateConfig, [tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(CurateConfig, [bad])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(CurateConfig, overrides=["no_equals_sign"])


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("run: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(CurateConfig, [p])


def test_dump_round_trips_with_its_hash(tmp_path):
    cfg = load_config(CurateConfig, overrides=["run.name=x", "fetch.max_aspect_ratio=inf"])
    text = dump_yaml(cfg)
    assert text.splitlines()[0] == f"# zxl resolved config, hash {config_hash(cfg)}"
    p = tmp_path / "config.yaml"
    p.write_text(text)
    again = load_config(CurateConfig, [p])
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert yaml.safe_load(text)["run"]["name"] == "x"


def test_hash_changes_with_any_value():
    a = load_config(CurateConfig)
    b = load_config(CurateConfig, overrides=["fetch.encode_quality=90"])
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(load_config(CurateConfig))


def test_valid_keys_lists_sections_and_leaves():
    keys = valid_keys(CurateConfig)
    assert "fetch" in keys and "fetch.timeout" in keys and "demo.slow_seconds" in keys


def test_shipped_presets_load():
    from pathlib import Path

    for p in sorted(Path(__file__).parents[1].joinpath("configs/curate").glob("*.yaml")):
        load_config(CurateConfig, [p])


def _numeric_fields(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _numeric_fields(hints[f.name], f"{prefix}{f.name}.")
        elif hints[f.name] in (int, float):
            yield f"{prefix}{f.name}", f


def test_every_numeric_key_has_a_range_and_its_default_is_in_it():
    from zxl.trainer.config import TrainConfig

    for root in (CurateConfig, TrainConfig):
        for key, f in _numeric_fields(root):
            assert "range" in f.metadata, f"{root.__name__} {key} has no allowed range (zxl.config.num)"
            default = f.default if f.default is not f.default_factory else f.default_factory()
            assert default in f.metadata["range"], key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fetch.retries=-1", "fetch.retries must be an integer from 0 to 100, got -1"),
        ("fetch.timeout=.nan", "fetch.timeout must be a number in (0,3600], got nan"),
        ("fetch.timeout=0", "fetch.timeout must be a number in (0,3600], got 0.0"),
        ("fetch.image_size=-1", "fetch.image_size must be an integer from 1 to 65535, got -1"),
        ("fetch.max_image_pixels=-1", "fetch.max_image_pixels must be an integer >= 1, got -1"),
        ("inspect.phash_size=-8", "inspect.phash_size must be an integer from 2 to 8, got -8"),
        ("fetch.encode_quality=500", "fetch.encode_quality must be an integer from 0 to 100, got 500"),
        ("demo.bad_fraction=2", "demo.bad_fraction must be a number in [0,1], got 2.0"),
        ("demo.size=0", "demo.size must be an integer from 1 to 1000000, got 0"),
        ("demo.size=-5", "demo.size must be an integer from 1 to 1000000, got -5"),
        ("dedup.embedding_cosine=inf", "dedup.embedding_cosine must be a number in [0,1], got inf"),
        ("fetch.max_aspect_ratio=0.5", "fetch.max_aspect_ratio must be a number in [1,inf], got 0.5"),
    ],
)
def test_numbers_outside_their_range_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(CurateConfig, overrides=[override])
    assert str(e.value) == message


def test_trainer_ranges_and_programmatic_configs_are_checked():
    from zxl.pipeline.curate import curate
    from zxl.trainer.config import TrainConfig

    with pytest.raises(ConfigError, match=r"optim.ema_decay must be a number in \[0,1\), got 1.0"):
        load_config(TrainConfig, overrides=["optim.ema_decay=1"])
    cfg = CurateConfig()
    cfg.fetch.retries = -1  # built in code, not loaded: curate checks before any work
    with pytest.raises(ConfigError, match="fetch.retries must be an integer from 0 to 100"):
        curate(cfg)
    assert load_config(CurateConfig, overrides=["fetch.max_aspect_ratio=inf"]).fetch.max_aspect_ratio == float("inf")
