"""Config layering (file < environment < flags) and start-up validation."""

import argparse

import pytest

from peer.config import PeerConfig, add_flags, load_config
from tests.conftest import peer_cli


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(argv)


def test_flags_beat_environment_beat_file(tmp_path):
    config_file = tmp_path / "peer.toml"
    config_file.write_text('run_id = "from-file"\nqueue_size = 3\nstrategy = "downpour"\n')
    env = {"DASGD_RUN_ID": "from-env", "DASGD_QUEUE_SIZE": "5", "DASGD_WARM_START": "false"}
    config = load_config(parse(["--config", str(config_file), "--run-id", "from-flag"]), env)
    assert config.run_id == "from-flag"  # flag over env over file
    assert config.queue_size == 5  # env over file
    assert config.strategy == "downpour"  # file over default
    assert config.warm_start is False
    assert config.broadcast_every == PeerConfig().broadcast_every


def test_secrets_are_masked_when_printed():
    text = PeerConfig(token_file="/etc/dasgd/token").describe()
    assert "/etc/dasgd/token" not in text and "token_file = '***'" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compression", "zip"], "--compression 'zip'"),
        (["--topology", "star"], "--topology 'star'"),
        (["--shard", "4/4"], "--shard '4/4'"),
        (["--queue-size", "0"], "--queue-size must be at least 1"),
    ],
)
def test_bad_settings_fail_at_start_with_the_flag_name(argv, message):
    with pytest.raises(ValueError, match=message):
        load_config(parse(argv), {})
    cli = peer_cli("run", *argv)
    assert cli.returncode == 2 and message in cli.stderr and "Traceback" not in cli.stderr


def test_unknown_setting_in_file_is_refused(tmp_path):
    config_file = tmp_path / "peer.toml"
    config_file.write_text("learning_rat = 0.1\n")
    with pytest.raises(ValueError, match="unknown setting 'learning_rat'"):
        load_config(parse(["--config", str(config_file)]), {})
