"""daemon.log rotation by the supervisor (issue 14): copytruncate, bounded backups, and writers that
keep their O_APPEND descriptor land at the start of the truncated file."""

from __future__ import annotations

import os
import stat

from digitorn_site.cli.supervisor import Supervisor


def test_log_rotates_past_its_size_and_keeps_a_bounded_number_of_backups(tmp_path):
    path = tmp_path / "daemon.log"
    # As `digitorn start` opens it for the supervisor and every child.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    sup = Supervisor(listen_fd=-1, host="127.0.0.1", port=1, log_file=str(path), log_max_bytes=100, log_backups=2)
    try:
        os.write(fd, b"a" * 50)
        assert sup.rotate_log(force=True) is False  # under the limit: untouched
        for generation in (b"1", b"2", b"3"):
            os.write(fd, generation * 150)
            assert sup.rotate_log(force=True) is True
            assert path.stat().st_size == 0
        os.write(fd, b"after")
    finally:
        os.close(fd)
    # The writer's next line starts the fresh file (no hole of zeros before it).
    assert path.read_bytes() == b"after"
    assert (tmp_path / "daemon.log.1").read_bytes() == b"3" * 150
    assert (tmp_path / "daemon.log.2").read_bytes() == b"2" * 150
    assert not (tmp_path / "daemon.log.3").exists()  # two backups kept, the oldest dropped
    assert stat.S_IMODE((tmp_path / "daemon.log.1").stat().st_mode) == 0o600


def test_no_rotation_in_the_foreground(tmp_path):
    assert Supervisor(listen_fd=-1, host="127.0.0.1", port=1).rotate_log(force=True) is False
