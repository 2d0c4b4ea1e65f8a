import subprocess
import sys

from hwq.cli import main


def test_targets_lists_every_board(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("x86-host", "x86-avx2", "raspberry-pi-4b", "raspberry-pi-5", "nvidia-jetson-orin-nano", "nvidia-t4",
                 "nvidia-h100"):
        assert name in out


def test_unknown_target_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--target", "raspberry-pi-6", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "hwq: error:" in err and "'raspberry-pi-6'" in err and "'raspberry-pi-5'" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "hwq.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout
