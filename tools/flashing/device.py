"""`upload`, `provision`, `verify`: the board's filesystem over its REPL (mpremote).

mpremote soft-resets a board before it runs anything, so the app is stopped and
the heap is clean; on the unix port that reset ends the process, so with
--board unix (the VM on a pty) it resumes the running interpreter instead.

provision: hub/config/keys_file.py provision (what `gridbid hub keys` does) makes the
hub's keys file (0600: its master secret and the group key) unless it has them, and
the battery's config over a template: its CoAP pair key with the hub (derived from
the hub's master secret), the group key and the hub's settings. This adds the
Wi-Fi settings, checks the result with the firmware's own config.check, keeps it
as battery-<id>.json (0600) beside the hub's keys, and copies that file to the
board as config.json.tmp, renamed over config.json there (a reset mid-copy leaves
the old config whole). The board then answers the file's sha256, which must be
the local file's. No key is printed, ever.

The hub gives a battery no aggregator's key: each aggregator the battery trusts
enrolls it (`gridbid aggregator enroll`, then `gridbid device trust --config
battery-<id>.json ...`), and provision run again pushes the file, keeping them.
"""

import hashlib
import importlib.util
import ipaddress
import json
import re
import sys
from pathlib import Path

from flashing import ROOT, VM_BOARD, Fail, Mismatch, Script, need_port, profile, tool

DEFAULT_TEMPLATE = ROOT / "firmware" / "config.example.json"
VERSION_FILE = ROOT / "firmware" / "version.py"
MAX_DEVICE_ID = 2**32 - 1  # a battery's device id is its key id in frame headers: u32
SHOWN_HASH = 16  # hex digits of a sha256 shown to people (a whole one looks like a key)

# Run on the board: the firmware version, and the sha256 of its config.json.
VERIFY_CODE = Script(
    "verify",
    """\
import sys, hashlib, binascii
sys.modules.pop('version', None)
try:
    import version
    v = version.VERSION
except ImportError:
    v = '-'
try:
    h = hashlib.sha256()
    with open('config.json', 'rb') as f:
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
    d = binascii.hexlify(h.digest()).decode()
except OSError:
    d = '-'
print('gridbid-verify', v, d)
""",
)
# Run on the board after the copy: config.json.tmp replaces config.json at once.
INSTALL_CODE = """\
import os
try:
    os.rename('config.json.tmp', 'config.json')
except OSError:
    os.remove('config.json')
    os.rename('config.json.tmp', 'config.json')
"""
# A plain upload's modules on the filesystem would shadow the ROMFS image's.
ROMFS_CLEANUP = """\
import os
def rm(p):
    try:
        if os.stat(p)[0] & 0x4000:
            for e in os.listdir(p):
                rm(p + '/' + e)
            os.rmdir(p)
        else:
            os.remove(p)
    except OSError:
        pass
for p in %r:
    rm(p)
"""


def mpremote(port, board, *commands, dry_run=False):
    resume = ["resume"] if board == VM_BOARD else []
    return [tool("mpremote", dry_run), "connect", port, *resume, *commands]


def remote_root(board):
    """The board's working folder as an mpremote destination: on a board "/" (":"); the
    unix port's is the VM's working directory, which mpremote names ":./"."""
    return ":./" if board == VM_BOARD else ":"


# --- upload -------------------------------------------------------------------------------


def upload(board, bundle, port, plan, romfs_image=None):
    """Copy a built bundle (tools/flash.py build) to the board's filesystem."""
    need_port(port, plan.dry_run)
    items = sorted(bundle.iterdir(), key=lambda p: p.name)
    if romfs_image is not None:
        plan.run(mpremote(port, board, "romfs", "deploy", str(romfs_image), dry_run=plan.dry_run),
                 "could not deploy the ROMFS image to %s" % port)  # fmt: skip
        stale = ["protocol", "registers"] + [
            p.stem + ".mpy" for p in sorted((ROOT / "firmware").glob("*.py"))
        ]  # fmt: skip
        cleanup = Script("remove-stale-modules", ROMFS_CLEANUP % stale)
        plan.run(mpremote(port, board, "exec", cleanup, dry_run=plan.dry_run),
                 "could not remove the modules the ROMFS image replaces")  # fmt: skip
    files = [p for p in bundle.rglob("*") if p.is_file()]
    copy = ["fs", "cp", "-r", *map(str, items), remote_root(board)]
    plan.run(mpremote(port, board, *copy, dry_run=plan.dry_run), "upload to %s failed" % port)
    size = sum(p.stat().st_size for p in files)
    if not plan.dry_run:
        print("uploaded %d files (%d bytes) to %s; unchanged ones were skipped"
              % (len(files), size, port))  # fmt: skip


# --- provision ------------------------------------------------------------------------------


def device_id(text):
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value <= MAX_DEVICE_ID:
        raise Fail("--device-id must be a whole number 1..%d (it is also the battery's key id), "
                   "not %r" % (MAX_DEVICE_ID, text))  # fmt: skip
    return value


def provision(args, plan):
    from hub.config import hub_toml, keys_file

    battery = device_id(args.device_id)
    if not args.hub_config:
        raise Fail("--hub-config is needed: the hub.toml whose keys file gives the battery keys")
    need_port(args.port, plan.dry_run)
    try:
        cfg = hub_toml.load(args.hub_config, keys=False)
    except hub_toml.ConfigError as exc:
        raise Fail(str(exc)) from None
    if not args.template and args.board != VM_BOARD:
        raise Fail("--template is needed for board %s: a config.json naming its devices "
                   "(hardware/bench/ has RS-485 ones)" % args.board)  # fmt: skip
    template = Path(args.template) if args.template else DEFAULT_TEMPLATE
    settings = wifi_settings(args, profile(args.board))  # over the hub's and the template's
    coap, note = coap_settings(cfg, args.hub_address)
    settings.update(coap)
    out = Path(args.out) if args.out else Path(cfg["keys_file"]).parent
    target = out / ("battery-%d.json" % battery)
    # Checked first with stand-in hub keys, so a bad template changes nothing anywhere.
    stand_in = keys_file.HubKeys(bytes(32), bytes(32))
    try:
        base = keys_file.read_template(template)
    except keys_file.KeysError as exc:
        raise Fail(str(exc)) from None
    hub_side = keys_file.battery_settings(cfg, stand_in, battery)
    check_config({**base, **hub_side, **settings}, battery)
    extra = [", Wi-Fi %s" % settings["wifi"]["ssid"]] if "wifi" in settings else []
    extra += [", CoAP %s" % settings["coap_hub"]] if "coap_hub" in settings else []
    plan.say("battery %d: hub %s, template %s%s" % (battery, args.hub_config, template,
                                                   "".join(extra)))  # fmt: skip
    if note:
        plan.say("note: " + note)
    plan.note("make the hub's master and group keys in %s (0600), unless it holds them"
              % cfg["keys_file"])  # fmt: skip
    for agg in cfg["aggregators"]:  # keys_file.provision makes what a hosted one lacks
        if agg.get("identity_file") and not Path(agg["identity_file"]).exists():
            plan.note("make hosted aggregator %s's identity file %s (0600)"
                      % (agg["name"], agg["identity_file"]))  # fmt: skip
    plan.note("write battery %d's config to %s (0600): its CoAP key derived from the hub's "
              "master, the aggregators it trusts kept" % (battery, target))  # fmt: skip
    if not plan.dry_run:
        if not out.is_dir():
            raise Fail("no folder %s for battery-%d.json" % (out, battery))
        try:
            said = keys_file.provision(cfg, [battery], out, str(template), extra=settings)
            check_config(keys_file.read_template(target), battery)  # as the board reads it
        except keys_file.KeysError as exc:
            raise Fail(str(exc)) from None
        for line in said:
            plan.say(line)
        trusted = sorted(int(a) for a in json.loads(target.read_text()).get("keys") or {})
        if trusted:
            plan.say("battery %d trusts aggregator %s"
                     % (battery, ", ".join(str(a) for a in trusted)))  # fmt: skip
        else:
            plan.say("battery %d trusts no aggregator yet: enroll it with each (`gridbid "
                     "aggregator enroll`, `gridbid device trust --config %s ...`), then "
                     "provision again" % (battery, target))  # fmt: skip
    install = Script("install-config", INSTALL_CODE + VERIFY_CODE)
    copy = ["fs", "cp", str(target), ":config.json.tmp", "+", "exec", install]
    said = plan.run(mpremote(args.port, args.board, *copy, dry_run=plan.dry_run),
                    "could not write config.json on %s" % args.port)  # fmt: skip
    if said is None:
        return
    _version, digest = parse_verify(said)
    if digest != sha256_of(target):
        raise Fail("config.json on %s is not what was written (sha256 %s, expected %s)"
                   % (args.port, short(digest), short(sha256_of(target))))  # fmt: skip
    plan.say("battery %d provisioned on %s: config.json sha256 %s (reset the board to start it)"
             % (battery, args.port, short(digest)))  # fmt: skip


def wifi_settings(args, board_profile):
    if not args.wifi_ssid:
        if board_profile.get("network") == "wifi":
            raise Fail("board %s joins Wi-Fi: --wifi-ssid and --wifi-password-file are needed"
                       % args.board)  # fmt: skip
        return {}
    if not args.wifi_password_file:
        raise Fail("--wifi-password-file is needed with --wifi-ssid "
                   "(a password is read from a file, never from the command line)")  # fmt: skip
    try:
        with open(args.wifi_password_file) as f:
            password = f.read().rstrip("\r\n")
    except OSError as exc:
        raise Fail("cannot read the Wi-Fi password file %s: %s"
                   % (args.wifi_password_file, exc.strerror)) from None  # fmt: skip
    return {"wifi": {"ssid": args.wifi_ssid, "password": password}}


def coap_settings(cfg, address):
    """coap_hub ("host:port") when the hub serves CoAP ([coap] in hub.toml): the battery
    then reconciles its contracts with the hub and takes its clock and price from it.
    -> (settings, a note for the user or None)."""
    coap = cfg.get("integrations", {}).get("coap")
    if coap is None:
        return {}, "hub.toml has no [coap]: --hub-address is not needed" if address else None
    bind = ipaddress.ip_address(coap["bind"])  # checked by the hub's loader
    host = address or (None if bind.is_unspecified or bind.is_loopback else coap["bind"])
    if host is None:
        return {}, ("hub.toml has [coap]: give --hub-address (this hub's address as the "
                    "battery sees it) for the battery to use it")  # fmt: skip
    note = None
    if bind.is_loopback:  # the default: CoAP stays on the hub's machine until told
        note = ("hub.toml's [coap] bind is %s: set it to the hub's LAN address (or "
                "0.0.0.0) for the battery to reach it" % coap["bind"])  # fmt: skip
    return {"coap_hub": "%s:%d" % (host, coap["port"])}, note


def check_config(data, battery):
    """The firmware's own check (firmware/config.py, run here on CPython)."""
    firmware = str(ROOT / "firmware")
    spec = importlib.util.spec_from_file_location("_firmware_config", firmware + "/config.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, firmware)  # its own modules (jsonfile) import as on a board
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(firmware)
    try:
        module.check(json.loads(json.dumps(data)), "battery-%d config" % battery)
    except module.ConfigError as exc:
        raise Fail("the firmware would refuse this config: %s" % exc) from None


# --- verify ---------------------------------------------------------------------------------


def sha256_of(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def short(digest):
    return digest[:SHOWN_HASH] if digest and digest != "-" else "(none)"


def local_version():
    found = re.search(r'^VERSION = "([^"]+)"', VERSION_FILE.read_text(), re.M)
    return found.group(1)


def parse_verify(output):
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "gridbid-verify":
            return parts[1], parts[2]
    raise Fail("the board did not answer the check: %s" % (output.strip()[-200:] or "(nothing)"))


def verify(args, plan):
    need_port(args.port, plan.dry_run)
    expected = None
    if args.config:
        expected = Path(args.config)
    elif args.hub_config and args.device_id:
        from hub.config import hub_toml

        try:
            cfg = hub_toml.load(args.hub_config, keys=False)
        except hub_toml.ConfigError as exc:
            raise Fail(str(exc)) from None
        expected = Path(cfg["keys_file"]).parent / ("battery-%d.json" % device_id(args.device_id))
    if expected is not None and not expected.is_file():
        raise Fail("no local config %s to compare with (provision writes it)" % expected)
    said = plan.run(mpremote(args.port, args.board, "exec", VERIFY_CODE, dry_run=plan.dry_run),
                    "could not read back %s" % args.port)  # fmt: skip
    if said is None:
        return
    version, digest = parse_verify(said)
    ours = local_version()
    problems = []
    print("firmware %s on %s (this tree: %s)" % (version if version != "-" else "(none)",
                                                 args.port, ours))  # fmt: skip
    if version == "-":
        problems.append("no gridbid firmware on %s (no version module): upload it" % args.port)
    elif version != ours:
        problems.append("the board runs firmware %s, this tree is %s: upload" % (version, ours))
    if digest == "-":
        problems.append("no config.json on %s: provision it" % args.port)
    else:
        line = "config.json sha256 %s" % short(digest)
        if expected is not None:
            same = digest == sha256_of(expected)
            line += " (%s %s)" % ("matches" if same else "differs from", expected)
            if not same:
                problems.append("config.json on %s differs from %s" % (args.port, expected))
        print(line)
    if problems:
        raise Mismatch("; ".join(problems))
