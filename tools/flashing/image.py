"""`flash`: put MicroPython itself on a board (the image comes from micropython.org).

ESP32 DevKitC: esptool asks the chip what it is (`chip-id`) and a wrong chip is
refused before anything is erased; then `erase-flash` (the filesystem too: upload
and provision again after) and `write-flash -z 0x1000 IMAGE`, where an ESP32's
second-stage bootloader starts.

Pico W: a UF2 file copied to the RPI-RP2 drive the RP2040's boot ROM mounts when
BOOTSEL is held at power-up (or after `mpremote bootloader`, which --port does); the
drive's INFO_UF2.TXT says which chip it is. Without a drive, picotool loads it.
"""

import glob
import os
import shutil
import struct
import time
from pathlib import Path

from flashing import Fail, need_port, tool

# board -> the chip esptool must find (its CHIP_NAME), or the UF2 family of the image
ESP_CHIPS = {"esp32-devkitc": "ESP32"}
UF2_FAMILIES = {"pico-w": (0xE48BFF56, "RP2040")}
ESP_IMAGE_MAGIC = 0xE9  # first byte of an ESP32 bootloader/firmware image
ESP32_OFFSET = "0x1000"
UF2_MAGIC = (0x0A324655, 0x9E5D5157)  # "UF2\n", then the second magic number
UF2_FAMILY_FLAG = 0x2000
RP2_BOARD_ID = "Board-ID: RPI-RP2"
DRIVE_GLOBS = ("/media/*/RPI-RP2", "/run/media/*/RPI-RP2", "/media/RPI-RP2", "/mnt/RPI-RP2")
KNOWN_FAMILIES = {0xE48BFF56: "RP2040", 0xE48BFF59: "RP2350", 0xE48BFF5A: "RP2350 (RISC-V)",
                  0xC47E5767: "ESP32-S3", 0xBFDD4EEE: "ESP32-S2"}  # fmt: skip


def flash(board, image, port, drive, plan):
    if board in ESP_CHIPS:
        return flash_esp32(board, image, port, plan)
    if board in UF2_FAMILIES:
        return flash_uf2(board, image, port, drive, plan)
    raise Fail("board %s has nothing to flash: it is the MicroPython unix port "
               "(`upload` copies the bundle to its REPL)" % board)  # fmt: skip


def read_image(image):
    if not image:
        raise Fail("--image is needed: the MicroPython firmware file for the board")
    path = Path(image)
    if not path.is_file():
        raise Fail("no image %s: download the board's MicroPython firmware first "
                   "(micropython.org/download)" % image)  # fmt: skip
    return path, path.read_bytes()


def uf2_family(data):
    """The family id of a UF2 image's first block, None if it names none; Fail if the
    data is not UF2 at all."""
    if len(data) < 512 or struct.unpack_from("<II", data) != UF2_MAGIC:
        return False
    flags, family = struct.unpack_from("<I", data, 8)[0], struct.unpack_from("<I", data, 28)[0]
    return family if flags & UF2_FAMILY_FLAG else None


# --- ESP32 ------------------------------------------------------------------------------


def flash_esp32(board, image, port, plan):
    path, data = read_image(image)
    if uf2_family(data) is not False:
        raise Fail("%s is a UF2 image (for the Pico W), not an ESP32 .bin" % image)
    if not data or data[0] != ESP_IMAGE_MAGIC:
        raise Fail("%s is not an ESP32 firmware image (it does not start with 0x%02X)"
                   % (image, ESP_IMAGE_MAGIC))  # fmt: skip
    need_port(port, plan.dry_run)
    esptool = tool("esptool", plan.dry_run)
    chip = ESP_CHIPS[board]
    said = plan.run([esptool, "--port", port, "chip-id"], "no %s answered on %s" % (chip, port))
    if said is not None:
        found = chip_of(said)
        if found != chip:
            raise Fail("wrong chip on %s: found %s, board %s is an %s"
                       % (port, found or "an unknown chip", board, chip))  # fmt: skip
    low = chip.lower()
    plan.run([esptool, "--chip", low, "--port", port, "erase-flash"], "erase failed", stream=True)
    plan.run(
        [esptool, "--chip", low, "--port", port, "--baud", "460800",
         "write-flash", "-z", ESP32_OFFSET, str(path)],
        "write failed", stream=True,
    )  # fmt: skip
    plan.note("flashed: the filesystem is empty now: upload, then provision" if not plan.dry_run
              else "leave an empty filesystem: upload, then provision")  # fmt: skip


def chip_of(esptool_output):
    """The chip esptool connected to, from its own words: "Connected to ESP32 on PORT:"
    (esptool 5), or "Detecting chip type... ESP32" (4 and 5)."""
    for line in esptool_output.splitlines():
        line = line.strip()
        if line.startswith("Connected to ") and " on " in line:
            return line[len("Connected to ") :].split(" on ")[0].strip()
    for line in esptool_output.splitlines():
        if "Detecting chip type..." in line:
            name = line.split("Detecting chip type...")[1].strip()
            if name:
                return name.split()[0]
    return None


# --- Pico W ---------------------------------------------------------------------------


def flash_uf2(board, image, port, drive, plan):
    path, data = read_image(image)
    family = uf2_family(data)
    want, chip = UF2_FAMILIES[board]
    if family is False:
        raise Fail("%s is not a UF2 image (the Pico W takes MicroPython's .uf2 file)" % image)
    if family is not None and family != want:
        raise Fail("wrong chip: %s is for %s (family 0x%08x), board %s is an %s"
                   % (image, KNOWN_FAMILIES.get(family, "another chip"), family, board,
                      chip))  # fmt: skip
    if drive is None and port:
        need_port(port, plan.dry_run)
        plan.run([tool("mpremote", plan.dry_run), "connect", port, "bootloader"],
                 "could not restart the board on %s into its boot drive" % port)  # fmt: skip
        if plan.dry_run:
            plan.note("copy %s to the RPI-RP2 drive once it mounts" % image)
            return
        drive = wait_for_drive(10.0)
        if drive is None:
            raise Fail("the board on %s restarted, but no RPI-RP2 drive mounted in 10 s "
                       "(no automount here? mount it and give --drive)" % port)  # fmt: skip
    if drive is None:
        drive = find_drive()
    if drive is None:
        picotool = shutil.which("picotool")
        if picotool is None:
            raise Fail("no RPI-RP2 drive: hold BOOTSEL while plugging the Pico W in (it then "
                       "mounts as RPI-RP2), or give --drive")  # fmt: skip
        plan.run([picotool, "load", "-x", str(path)], "picotool could not load %s" % image)
        return
    check_drive(drive)
    target = Path(drive) / path.name
    plan.note("copy %s to %s (the Pico W restarts into it)" % (image, target))
    if not plan.dry_run:
        with open(target, "wb") as f:  # what `cp` does; the boot ROM writes it to flash
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def find_drive():
    found = sorted(p for pattern in DRIVE_GLOBS for p in glob.glob(pattern))
    return found[0] if found else None


def wait_for_drive(timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_drive()
        if found:
            return found
        time.sleep(0.2)
    return None


def check_drive(drive):
    info = Path(drive) / "INFO_UF2.TXT"
    try:
        text = info.read_text(errors="replace")
    except OSError:
        raise Fail("%s is not a Pico's boot drive (no INFO_UF2.TXT)" % drive) from None
    if RP2_BOARD_ID not in text:
        said = [x for x in text.splitlines() if x.startswith("Board-ID")] or ["no Board-ID"]
        raise Fail("wrong chip: the drive %s says %r, the Pico W's RP2040 says %r"
                   % (drive, said[0], RP2_BOARD_ID))  # fmt: skip
