"""Starting pcscd for tests and the demo: what is missing is named by its Debian package, and
a pcscd already serving this machine is never replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardsvc.devenv.pcsc import PcscBusy, PcscDaemon, PcscMissing, vpcd_reader_conf


def test_missing_pcscd_names_the_package(tmp_path: Path):
    with pytest.raises(PcscMissing, match="Debian package `pcscd`"):
        PcscDaemon(tmp_path, pcscd=Path("/nonexistent/pcscd")).start()


def test_missing_vpcd_names_the_package(tmp_path: Path):
    with pytest.raises(PcscMissing, match="Debian package `vsmartcard-vpcd`"):
        PcscDaemon(tmp_path, driver=Path("/nonexistent/libifdvpcd.so")).start()


def test_a_second_pcscd_is_refused(pcscd: PcscDaemon, tmp_path: Path):
    with pytest.raises(PcscBusy, match="another pcscd is running"):
        PcscDaemon(tmp_path, port=pcscd.port + 10).start()


def test_reader_conf_names_vpcd_on_our_port():
    conf = vpcd_reader_conf(40123, Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so"))
    assert "DEVICENAME /dev/null:40123\n" in conf and 'FRIENDLYNAME "Virtual PCD"' in conf
